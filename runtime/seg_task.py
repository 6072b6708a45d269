"""Semantic segmentation for the ``Trainer``: per-pixel losses, Dice/mIoU evaluation, the entry point.

The task follows ``tasks.ClassificationTask``'s interface (``name``, ``config_dict``, ``loss``,
``evaluate``), so the trainer's AMP, AdamW, warm-up + cosine schedule, EMA, DDP, atomic
checkpoints, exact resume and JSON-lines metrics apply unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .distributed import DistContext, all_reduce_sum, collate
from .seg_loss import SegLossConfig, segmentation_loss
from .seg_metrics import confusion_matrix, segmentation_metrics
from .trainer import TrainConfig, Trainer


class SegmentationTask:
    """Cross-entropy (+ Dice) with optional per-pixel distillation; Dice and mIoU on ``eval_set``.

    Args:
        num_classes: K.
        loss: the ``SegLossConfig``.
        eval_set: dataset of ``(image (C, H, W), mask (H, W))``, or None.
        eval_batch: evaluation batch per process.
        background: the class left out of ``mean_dice`` (None: none).

    Example:
        >>> task = SegmentationTask(3)
        >>> task.config_dict()["dice_weight"]
        0.0
    """

    name = "segmentation"

    def __init__(self, num_classes: int, loss: SegLossConfig = SegLossConfig(), eval_set=None, eval_batch: int = 32,
                 background: int | None = 0):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.loss_config = num_classes, loss
        self.eval_set, self.eval_batch, self.background = eval_set, eval_batch, background

    def config_dict(self) -> dict:
        d = self.loss_config.distill
        return {"name": self.name, "num_classes": self.num_classes, "dice_weight": self.loss_config.dice_weight,
                "ignore_index": self.loss_config.ignore_index, "kind": d.kind, "alpha": d.alpha, "tau": d.tau,
                "background": self.background}

    def loss(self, model: nn.Module, batch, teacher: nn.Module | None) -> dict[str, torch.Tensor]:
        images, masks = batch
        logits = model(images)  # (B, K, H, W)
        teacher_logits = None
        if teacher is not None and self.loss_config.distill.kind != "none":
            with torch.no_grad():
                teacher_logits = teacher(images)  # (B, K, H, W)
        return segmentation_loss(logits, masks, teacher_logits, self.loss_config)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: DistContext) -> dict:
        if self.eval_set is None:
            return {}
        was_training = model.training
        model.eval()
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64, device=ctx.device)
        loss = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # CE sum over valid pixels, their count
        ignore = self.loss_config.ignore_index
        for indices in torch.arange(ctx.rank, len(self.eval_set), ctx.world_size).split(self.eval_batch):
            images, masks = (t.to(ctx.device) for t in collate(self.eval_set, indices))
            logits = model(images).float()  # (B, K, H, W)
            confusion += confusion_matrix(logits.argmax(1), masks, self.num_classes, ignore)
            loss[0] += nn.functional.cross_entropy(logits, masks, ignore_index=ignore, reduction="sum")
            loss[1] += (masks != ignore).sum()
        model.train(was_training)
        confusion = all_reduce_sum(confusion, ctx)
        loss = all_reduce_sum(loss, ctx)
        metrics = segmentation_metrics(confusion.cpu(), self.background)
        return {"mean_dice": metrics["mean_dice"], "miou": metrics["miou"],
                "pixel_accuracy": metrics["pixel_accuracy"], "eval_loss": float(loss[0] / loss[1].clamp_min(1)),
                "dice_per_class": metrics["dice_per_class"], "iou_per_class": metrics["iou_per_class"]}


def train_segmentation(model: nn.Module, train_set, config: TrainConfig, *, num_classes: int,
                       loss: SegLossConfig = SegLossConfig(), teacher: nn.Module | None = None, eval_set=None,
                       background: int | None = 0, extra_config: dict | None = None, resume=None,
                       stop_at: int | None = None) -> dict:
    """Train a segmentation model ``model(images) -> (B, K, H, W)``; returns the final metrics.

    Args:
        model: the (binarized) model.
        train_set: dataset of ``(image, mask)``.
        config: the ``TrainConfig``.
        num_classes: K.
        loss: the ``SegLossConfig`` (distillation needs ``teacher``).
        teacher: the frozen full-precision model (``binarize_(...).teacher``), or None.
        eval_set, background, extra_config, resume, stop_at: as ``SegmentationTask`` and ``Trainer.run``.

    Raises:
        ValueError: distillation asked for without a teacher.

    Example:
        >>> train_segmentation(model, train_set, TrainConfig(steps=100, batch_size=8), num_classes=11)  # doctest: +SKIP
    """
    if loss.distill.kind != "none" and teacher is None:
        raise ValueError(f"distillation {loss.distill.kind!r} needs a teacher model")
    task = SegmentationTask(num_classes, loss, eval_set, background=background)
    trainer = Trainer(model, task, train_set, config, teacher=teacher if loss.distill.kind != "none" else None,
                      extra_config=extra_config)
    return trainer.run(resume=resume, stop_at=stop_at)

