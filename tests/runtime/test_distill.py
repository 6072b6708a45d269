"""Distillation losses against values computed by hand."""
import math

import pytest
import torch

from bitlower.runtime import DistillConfig, classification_loss, diffusion_loss


def ce(logits, label):
    return -math.log(math.exp(logits[label]) / sum(math.exp(v) for v in logits))


STUDENT = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
TEACHER = [[0.0, 3.0, 0.0], [1.0, 1.0, 2.0]]
LABELS = [0, 1]


def test_hard_distillation_by_hand():
    out = classification_loss(torch.tensor(STUDENT), torch.tensor(LABELS), torch.tensor(TEACHER),
                              DistillConfig("hard", alpha=0.25))
    label = (ce(STUDENT[0], 0) + ce(STUDENT[1], 1)) / 2
    distill = (ce(STUDENT[0], 1) + ce(STUDENT[1], 2)) / 2  # teacher argmax: 1, 2
    assert out["label_loss"].item() == pytest.approx(label, rel=1e-6)
    assert out["distill_loss"].item() == pytest.approx(distill, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.75 * label + 0.25 * distill, rel=1e-6)


def test_soft_distillation_by_hand():
    tau = 2.0
    out = classification_loss(torch.tensor(STUDENT), torch.tensor(LABELS), torch.tensor(TEACHER),
                              DistillConfig("soft", alpha=0.5, tau=tau))
    kl = 0.0
    for s, t in zip(STUDENT, TEACHER):
        ps = [math.exp(v / tau) / sum(math.exp(w / tau) for w in s) for v in s]
        pt = [math.exp(v / tau) / sum(math.exp(w / tau) for w in t) for v in t]
        kl += sum(b * math.log(b / a) for a, b in zip(ps, pt))
    distill = kl / 2 * tau * tau
    assert out["distill_loss"].item() == pytest.approx(distill, rel=1e-5)


def test_distillation_token_uses_dist_head():
    cls_logits, dist_logits = torch.tensor(STUDENT), torch.tensor(TEACHER)
    teacher = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    out = classification_loss((cls_logits, dist_logits), torch.tensor(LABELS), teacher, DistillConfig("hard"))
    assert out["label_loss"].item() == pytest.approx((ce(STUDENT[0], 0) + ce(STUDENT[1], 1)) / 2, rel=1e-6)
    assert out["distill_loss"].item() == pytest.approx((ce(TEACHER[0], 2) + ce(TEACHER[1], 0)) / 2, rel=1e-6)


def test_no_teacher_is_refused_and_none_kind():
    with pytest.raises(ValueError, match="teacher logits"):
        classification_loss(torch.zeros(1, 3), torch.tensor([0]), None, DistillConfig("soft"))
    out = classification_loss(torch.zeros(1, 3), torch.tensor([0]), None, DistillConfig("none"))
    assert out["loss"].item() == pytest.approx(math.log(3), rel=1e-6)
    with pytest.raises(ValueError):
        DistillConfig("hard", alpha=1.5)


def test_diffusion_loss_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)  # 2 noise channels + 2 variance channels
    noise = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([1.0, 1.0, 1.0, 1.0]).view(1, 4, 1, 1)
    out = diffusion_loss(pred, noise, teacher, alpha=0.5, noise_channels=2)
    assert out["denoise_loss"].item() == pytest.approx((1 + 4) / 2)
    assert out["distill_loss"].item() == pytest.approx((0 + 1 + 4 + 9) / 4)
    assert out["loss"].item() == pytest.approx(0.5 * 2.5 + 0.5 * 3.5)
    assert diffusion_loss(pred, noise, None, 0.5, 2)["loss"].item() == pytest.approx(2.5)
