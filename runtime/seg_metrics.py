"""Segmentation metrics from a confusion matrix: Dice and IoU per class, mean Dice, mIoU.

With ``TP_k``, ``FP_k``, ``FN_k`` counted over the pixels whose label is not the ignore index:

    Dice_k = 2 TP_k / (2 TP_k + FP_k + FN_k)        IoU_k = TP_k / (TP_k + FP_k + FN_k)

A class that is neither in the labels nor predicted has a zero denominator: its score is
undefined (NaN) and it is left out of the means. A class in the labels that is never
predicted (or predicted but absent from the labels) scores 0. ``mean_dice`` averages over the
classes other than the background (BinaryFormer reports foreground Dice); ``miou`` over every
class (the ADE20K convention).
"""
from __future__ import annotations

import math

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """``C[t, p]`` = pixels of label ``t`` predicted ``p``, float64 (K, K); ignored pixels skipped.

    Args:
        pred: predicted labels, any shape, values in ``[0, K)``.
        target: labels of the same shape, in ``[0, K)`` or ``ignore_index``.

    Raises:
        ValueError: shapes differ, or a label outside ``[0, K)`` that is not ``ignore_index``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) or be the ignore index {ignore_index}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)  # (K*K,)
    return counts.reshape(num_classes, num_classes).double()  # (K, K)


def class_scores(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per class, float64 (K,) each, NaN where undefined (see module)."""
    tp = confusion.diagonal()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    union = tp + fp + fn
    nan = torch.full_like(tp, math.nan)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), nan)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    return dice, iou


def _nanmean(values: torch.Tensor) -> float:
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else math.nan


def segmentation_metrics(confusion: torch.Tensor, background: int | None = 0) -> dict:
    """``mean_dice`` (classes other than ``background``), ``miou`` (all), ``pixel_accuracy`` and per-class lists.

    Per-class lists hold None where a score is undefined (JSON has no NaN).

    Example:
        >>> c = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2, 255)
        >>> segmentation_metrics(c)["mean_dice"]
        0.6666666666666666
    """
    dice, iou = class_scores(confusion)
    keep = torch.ones_like(dice, dtype=torch.bool)
    if background is not None:
        keep[background] = False
    total = float(confusion.sum())

    def listed(values):
        return [None if math.isnan(v) else v for v in values.tolist()]

    return {
        "mean_dice": _nanmean(dice[keep]),
        "miou": _nanmean(iou),
        "pixel_accuracy": float(confusion.diagonal().sum()) / total if total else math.nan,
        "dice_per_class": listed(dice),
        "iou_per_class": listed(iou),
    }
