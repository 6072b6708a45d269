"""On a CUDA GPU: the binarized absorbing transformer at the seed's N = 1680 runs the fused kernels
(no fallback counted; bilinear: a counted fallback) forward and backward, for every preset. Not run in CI (no GPU there)."""
import pytest
import torch

from bitlower.counters import counters
from bitlower.counters import reset as reset_counters
from bitlower.models.absorbing3d import AbsorbingConfig, AbsorbingTransformer3D
from bitlower.runtime import PRESETS, binarize_, preset
from bitlower.runtime.absorbing import absorbing_loss, q_sample, sample_time


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_seed_scale_training_step_uses_fused_kernels(name, assert_fallbacks_match):
    torch.manual_seed(0)
    model = AbsorbingTransformer3D(AbsorbingConfig(depth=2)).cuda()  # 10 x 14 x 12 grid, width 384, 6 heads
    config = preset(name, keep_teacher=False, **({"bias": "head"} if name == "binary_attention" else {}))
    binarize_(model, config)
    codes = torch.randint(0, 64, (2, 1680, 8), device="cuda")
    reset_counters()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        t = sample_time(2, 256, "cuda")
        x_t, mask = q_sample(codes, t, 256, model.mask_id)
        loss = absorbing_loss(model(x_t), codes, mask, t, 256)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert_fallbacks_match(config, dict(counters["fallback"]))
