"""On CUDA: every preset trains the segmentation ViT at N = 1024 through the fused kernels (bilinear: counted fallback).

The binarized attention modules call ``bitlower.binary_attention`` themselves, so the compiled graph has no
SDPA site left for the backend to rewrite (``sites_rewritten`` stays 0); the fused forward and backward
kernels are seen in the CUDA profiler of one compiled training step instead.
Not run in CI (``gpu`` marker); written for the GPU machine alongside ``benchmarks/segmentation_digits.py``.
"""
from __future__ import annotations

import math

import pytest
import torch

import bitlower
from bitlower.models import digit_canvases, seg_vit
from bitlower.runtime import PRESETS, SegmentationTask, TrainConfig, binarize_, preset
from bitlower.runtime.trainer import Trainer

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def canvases():
    return digit_canvases("train", 256, 16), digit_canvases("test", 256, 8)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_at_n_1024_with_fused_kernels(name, canvases, assert_fallbacks_match):
    train, test = canvases
    torch.manual_seed(0)
    model = seg_vit("small", img_size=256, in_chans=1, num_classes=11, depth=2, value_reduction=4, decoder_width=256)
    binarize_config = preset(name, keep_teacher=False)
    binarize_(model, binarize_config)
    config = TrainConfig(steps=3, batch_size=4, lr=3e-4, progress=False, log_every=0, device="cuda",
                         compile_backend="bitlower")
    trainer = Trainer(model, SegmentationTask(11, eval_set=test), train, config)
    bitlower.counters.clear()
    losses = [trainer.train_step()["loss"] for _ in range(2)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        losses.append(trainer.train_step()["loss"])
        torch.cuda.synchronize()
    assert all(math.isfinite(v) for v in losses)
    kernels = {event.name for event in prof.events()}
    if binarize_config.attention.weighting != "bilinear":  # bilinear: the counted fallback, no fused kernel
        assert any("_binary_attn_fwd" in k for k in kernels), sorted(kernels)
        assert any("_binary_attn_bwd" in k for k in kernels), sorted(kernels)
    assert_fallbacks_match(binarize_config, dict(bitlower.counters["fallback"]))
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["mean_dice"] <= 1.0
