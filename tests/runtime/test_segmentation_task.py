"""Segmentation task: Dice/mIoU by hand, the losses against float64 loops, every preset trains, exact resume."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitlower.models import SegmentationTensors, seg_vit
from bitlower.runtime import (
    PRESETS,
    DistillConfig,
    SegLossConfig,
    SegmentationTask,
    TrainConfig,
    binarize_,
    confusion_matrix,
    preset,
    segmentation_loss,
    segmentation_metrics,
)
from bitlower.runtime.distributed import DistContext
from bitlower.runtime.seg_loss import DICE_SMOOTH, soft_dice_loss
from bitlower.runtime.trainer import Trainer

IGNORE = 255


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """One intra-op thread for these tiny models (as tests/models/conftest.py): on the shared
    2-core machine two threads contend with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dice_and_iou_by_hand_with_an_absent_class_and_ignored_pixels():
    target = torch.tensor([0, 0, 1, 1, IGNORE, 0])
    pred = torch.tensor([0, 1, 1, 1, 2, 2])  # the ignored pixel's prediction (2) counts nowhere
    metrics = segmentation_metrics(confusion_matrix(pred, target, 4, IGNORE), background=0)
    # class 0: TP 1, FP 0, FN 2; class 1: TP 2, FP 1, FN 0; class 2: TP 0, FP 1; class 3: absent
    assert metrics["dice_per_class"] == [0.5, 0.8, 0.0, None]
    assert metrics["iou_per_class"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and metrics["iou_per_class"][3] is None
    assert metrics["mean_dice"] == pytest.approx((0.8 + 0.0) / 2)  # foreground, class 3 left out
    assert metrics["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 5)
    everything = segmentation_metrics(confusion_matrix(pred, target, 4, IGNORE), background=None)
    assert everything["mean_dice"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_a_class_in_the_labels_never_predicted_scores_zero():
    c = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2, IGNORE)
    assert segmentation_metrics(c)["dice_per_class"] == [2 / 3, 0.0]


def test_confusion_matrix_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3, IGNORE)


def _logits_and_target(seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 5, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, classes, (2, 5, 3), generator=g)
    target[0, 0, :] = IGNORE
    return logits, target


def test_soft_dice_loss_against_a_float64_loop():
    logits, target = _logits_and_target()
    probs = logits.softmax(1)
    scores = []
    for k in range(4):
        inter = sizes = 0.0
        for b, i, j in torch.cartesian_prod(torch.arange(2), torch.arange(5), torch.arange(3)).tolist():
            if target[b, i, j] == IGNORE:
                continue
            y = float(target[b, i, j] == k)
            inter += float(probs[b, k, i, j]) * y
            sizes += float(probs[b, k, i, j]) + y
        scores.append((2 * inter + DICE_SMOOTH) / (sizes + DICE_SMOOTH))
    expected = 1 - sum(scores) / 4
    assert float(soft_dice_loss(logits, target, IGNORE)) == pytest.approx(expected, rel=1e-6)


def test_ignored_pixels_change_no_loss_term():
    logits, target = _logits_and_target()
    teacher = torch.randn_like(logits)
    cfg = SegLossConfig(dice_weight=0.5, distill=DistillConfig("soft", alpha=0.3, tau=2.0))
    moved = logits.clone()
    moved[0, :, 0, :] += 100.0  # only pixels whose label is the ignore index
    a, b = segmentation_loss(logits, target, teacher, cfg), segmentation_loss(moved, target, teacher, cfg)
    for key in ("loss", "ce_loss", "dice_loss", "distill_loss"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-9), key


def test_distillation_terms_by_hand():
    logits, target = _logits_and_target(1)
    teacher = torch.randn_like(logits)
    valid = target != IGNORE
    soft = segmentation_loss(logits, target, teacher, SegLossConfig(distill=DistillConfig("soft", 0.25, 2.0)))
    p_t, log_s = (teacher / 2).softmax(1), (logits / 2).log_softmax(1)
    kl = (p_t * (p_t.log() - log_s)).sum(1)[valid].mean() * 4
    assert float(soft["distill_loss"]) == pytest.approx(float(kl), rel=1e-6)
    assert float(soft["loss"]) == pytest.approx(0.75 * float(soft["ce_loss"]) + 0.25 * float(kl), rel=1e-6)
    hard = segmentation_loss(logits, target, teacher, SegLossConfig(distill=DistillConfig("hard", 0.5)))
    manual = F.cross_entropy(logits, teacher.argmax(1), reduction="none")[valid].mean()
    assert float(hard["distill_loss"]) == pytest.approx(float(manual), rel=1e-6)
    with pytest.raises(ValueError, match="needs teacher logits"):
        segmentation_loss(logits, target, None, SegLossConfig(distill=DistillConfig("hard")))


class MaskEcho(nn.Module):
    """Logits that predict the label stored in the image's first channel (a perfect model)."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.one_hot(x[:, 0].long().clamp(0, self.classes - 1), self.classes).permute(0, 3, 1, 2).float() * 10


def test_evaluate_a_perfect_model_scores_one_and_skips_ignored_pixels():
    masks = torch.randint(0, 3, (5, 4, 4))
    masks[0, 0, 0] = IGNORE
    images = masks.clamp(max=2)[:, None].float()
    ds = SegmentationTensors(images, masks, [0.0], [1.0], ["bg", "a", "b"])
    result = SegmentationTask(3, eval_set=ds, eval_batch=2).evaluate(MaskEcho(3), DistContext())
    assert result["mean_dice"] == 1.0 and result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0


def tiny_seg(seed=0):
    torch.manual_seed(seed)
    return seg_vit("tiny", img_size=16, in_chans=1, num_classes=3, depth=1, embed_dim=32, num_heads=2,
                   decoder_width=32, value_reduction=2)


@pytest.fixture(scope="module")
def blobs():
    """Eight 16x16 images whose label is the bright square (class 1) or the dim one (class 2)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 16, 16, generator=g) * 0.1
    masks = torch.zeros(8, 16, 16, dtype=torch.long)
    for i in range(8):
        r, c = (int(v) for v in torch.randint(0, 8, (2,), generator=g))
        cls = 1 + i % 2
        images[i, 0, r:r + 8, c:c + 8] += 1.0 if cls == 1 else 0.5
        masks[i, r:r + 8, c:c + 8] = cls
    return SegmentationTensors(images, masks, [0.0], [1.0], ["background", "bright", "dim"])


@pytest.mark.parametrize("name", ["none", *sorted(PRESETS)])
def test_each_preset_trains_and_the_loss_falls(name, blobs):
    model = tiny_seg()
    teacher = binarize_(model, preset(name)).teacher if name != "none" else None
    distill = DistillConfig("hard" if teacher is not None else "none", alpha=0.3)
    task = SegmentationTask(3, SegLossConfig(dice_weight=0.5, distill=distill))
    config = TrainConfig(steps=8, batch_size=8, lr=2e-3, weight_decay=0.0, min_lr_ratio=1.0, progress=False)
    trainer = Trainer(model, task, blobs, config, teacher=teacher)
    qkv = model.encoder.blocks[0].attn.qkv.weight
    before = qkv.detach().clone()
    losses = [trainer.train_step() for _ in range(8)]
    assert all(math.isfinite(v["loss"]) for v in losses)
    # measured: CE 1.107 -> 0.849 (full precision) .. 0.858 (binary) over the 8 steps
    assert losses[-1]["ce_loss"] < losses[0]["ce_loss"] - 0.05, [v["ce_loss"] for v in losses]
    dim = model.encoder.config.embed_dim
    qk_moved = not torch.equal(qkv.detach()[:2 * dim], before[:2 * dim])
    assert qk_moved == (name != "sign_stopgrad")  # stop-grad: no gradient reaches the q/k projections
    assert not torch.equal(qkv.detach()[2 * dim:], before[2 * dim:])  # the value path always learns
    if teacher is not None:
        assert losses[0]["distill_loss"] > 0


def test_resume_is_exact_with_ema(blobs, tmp_path):
    def run(folder, stop_at=None, resume=None):
        model = tiny_seg()
        binarize_(model, preset("hamming"))
        config = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, out_dir=str(folder),
                             progress=False, log_every=1)
        trainer = Trainer(model, SegmentationTask(3, SegLossConfig(dice_weight=0.5), eval_set=blobs), blobs, config)
        result = trainer.run(resume=resume, stop_at=stop_at)
        return trainer, result

    whole, whole_result = run(tmp_path / "a")
    run(tmp_path / "b", stop_at=3)
    resumed, resumed_result = run(tmp_path / "b", resume="auto")
    assert resumed.step == 6
    for (k, v), w in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    for v, w in zip(whole.ema.shadow.state_dict().values(), resumed.ema.shadow.state_dict().values()):
        assert torch.equal(v, w)
    assert whole_result["mean_dice"] == resumed_result["mean_dice"]
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count('"train"') == 6


DDP_EVAL_WORKER = """
import json, sys, torch
from bitlower.runtime.distributed import setup, teardown
sys.path.insert(0, sys.argv[2])
from test_segmentation_task import ddp_eval_case
model, task = ddp_eval_case()
ctx = setup("cpu")
result = task.evaluate(model, ctx)
if ctx.rank == 0:
    open(sys.argv[1], "w").write(json.dumps(result))
teardown()
"""


def ddp_eval_case():
    """A tiny model and a task over 5 test canvases (rank 0 of 2 evaluates 3, rank 1 evaluates 2)."""
    from bitlower.models import digit_canvases

    torch.manual_seed(0)
    model = seg_vit("tiny", img_size=96, in_chans=1, num_classes=11, depth=1, embed_dim=32, num_heads=2,
                    decoder_width=32)
    return model, SegmentationTask(11, eval_set=digit_canvases("test", 96, 5), eval_batch=2)


@pytest.mark.slow
def test_evaluation_sharded_over_two_processes_equals_one(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, procs = tmp_path / "world2.json", []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", DDP_EVAL_WORKER, str(out), str(Path(__file__).parent)],
                                      env=env, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    model, task = ddp_eval_case()
    one, two = task.evaluate(model, DistContext()), json.loads(out.read_text())
    # confusion counts add exactly over the shards
    assert one["dice_per_class"] == two["dice_per_class"] and one["miou"] == two["miou"]
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-9)
