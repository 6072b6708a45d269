"""Per-pixel segmentation losses: cross-entropy, soft Dice, distillation from the teacher's logits.

Every term averages over the pixels whose label is not the ignore index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distill import DistillConfig

IGNORE_INDEX = 255  # label of pixels that count nowhere (ADE20K/mmseg convention; models.seg_dataset too)
DICE_SMOOTH = 1.0  # Laplace smoothing: a class absent from the batch and not predicted scores 1, loss 0


@dataclass(frozen=True)
class SegLossConfig:
    """The segmentation objective.

    Args:
        dice_weight: weight of the soft Dice loss added to the cross-entropy (0: cross-entropy only).
        ignore_index: label that counts in no term.
        distill: distillation from the full-precision model's per-pixel logits (``"soft"``: KL
            at temperature ``tau``; ``"hard"``: cross-entropy to the teacher's argmax); the label
            term gets ``1 - alpha``.

    Raises:
        ValueError: a negative ``dice_weight``.
    """

    dice_weight: float = 0.0
    ignore_index: int = IGNORE_INDEX
    distill: DistillConfig = DistillConfig("none")

    def __post_init__(self):
        if not self.dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``1 - mean_k (2 sum p_k y_k + s) / (sum p_k + sum y_k + s)`` over valid pixels, s = ``DICE_SMOOTH``.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) labels in ``[0, K)`` or ``ignore_index``.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    probs = logits.float().softmax(1) * valid  # (B, K, H, W)
    onehot = F.one_hot(target.masked_fill(~valid[:, 0], 0), num_classes)  # (B, H, W, K)
    onehot = onehot.permute(0, 3, 1, 2).float() * valid  # (B, K, H, W)
    inter = (probs * onehot).sum((0, 2, 3))  # (K,)
    sizes = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))  # (K,)
    return 1 - ((2 * inter + DICE_SMOOTH) / (sizes + DICE_SMOOTH)).mean()


def pixel_distillation(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                       config: DistillConfig, ignore_index: int) -> torch.Tensor:
    """Distillation per pixel, averaged over valid pixels: soft ``tau² KL(teacher ‖ student)`` or hard CE."""
    valid = target != ignore_index  # (B, H, W)
    teacher = teacher.detach().float()
    if config.kind == "hard":
        hard = teacher.argmax(1).masked_fill(~valid, ignore_index)  # (B, H, W)
        return F.cross_entropy(student.float(), hard, ignore_index=ignore_index)
    log_s = F.log_softmax(student.float() / config.tau, dim=1)  # (B, K, H, W)
    log_t = F.log_softmax(teacher / config.tau, dim=1)  # (B, K, H, W)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)  # (B, H, W)
    return kl[valid].mean() * config.tau**2


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None,
                      config: SegLossConfig) -> dict[str, torch.Tensor]:
    """``(1 - alpha) (CE + w Dice) + alpha distill``; returns ``loss``, ``ce_loss``, ``dice_loss``, ``distill_loss``.

    Raises:
        ValueError: logits and target sizes differ, or distillation without teacher logits.

    Example:
        >>> out = segmentation_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), None,
        ...                         SegLossConfig())
        >>> round(out["loss"].item(), 4)
        0.6931
    """
    if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
    ce = F.cross_entropy(logits.float(), target, ignore_index=config.ignore_index)
    dice = soft_dice_loss(logits, target, config.ignore_index) if config.dice_weight > 0 else torch.zeros_like(ce)
    label = ce + config.dice_weight * dice
    out = {"ce_loss": ce, "dice_loss": dice}
    if config.distill.kind == "none":
        return {"loss": label, **out, "distill_loss": torch.zeros_like(ce)}
    if teacher_logits is None:
        raise ValueError(f"distillation {config.distill.kind!r} needs teacher logits")
    distill = pixel_distillation(logits, teacher_logits, target, config.distill, config.ignore_index)
    alpha = config.distill.alpha
    return {"loss": (1 - alpha) * label + alpha * distill, **out, "distill_loss": distill}
