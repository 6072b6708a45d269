"""Classification and diffusion tasks for the ``Trainer``, and the two entry points that run them."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .adapters import classify, denoise, find_adapter
from .diffusion import DiffusionConfig, NoiseSchedule
from .distill import DistillConfig, classification_loss, diffusion_loss
from .distributed import DistContext, all_reduce_sum, collate
from .trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

EVAL_SEED = 1234  # fixed noise and timesteps of the diffusion evaluation, the same at every eval


def _shard(length: int, ctx: DistContext, batch: int):
    indices = torch.arange(ctx.rank, length, ctx.world_size)
    return indices.split(batch)


class ClassificationTask:
    """Cross-entropy with optional distillation from the teacher; accuracy on ``eval_set``.

    Args:
        distill: the ``DistillConfig``.
        eval_set: dataset of ``(image, label)``, or None.
        eval_batch: evaluation batch per process.
    """

    name = "classification"

    def __init__(self, distill: DistillConfig = DistillConfig("none"), eval_set=None, eval_batch: int = 512):
        self.distill, self.eval_set, self.eval_batch = distill, eval_set, eval_batch

    def config_dict(self) -> dict:
        return {"name": self.name, "kind": self.distill.kind, "alpha": self.distill.alpha, "tau": self.distill.tau}

    def loss(self, model: nn.Module, batch, teacher: nn.Module | None) -> dict[str, torch.Tensor]:
        images, labels = batch
        outputs = classify(model, images)
        teacher_logits = None
        if teacher is not None and self.distill.kind != "none":
            with torch.no_grad():
                teacher_logits = classify(teacher, images)
        return classification_loss(outputs, labels, teacher_logits, self.distill)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        was_training = model.training
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # correct, loss sum, count
        for indices in _shard(len(self.eval_set), ctx, self.eval_batch):
            images, labels = (t.to(ctx.device) for t in collate(self.eval_set, indices))
            logits = classify(model, images).float()
            totals[0] += (logits.argmax(-1) == labels).sum()
            totals[1] += nn.functional.cross_entropy(logits, labels, reduction="sum")
            totals[2] += labels.numel()
        model.train(was_training)
        correct, loss, count = all_reduce_sum(totals, ctx).tolist()
        return {"accuracy": correct / count, "eval_loss": loss / count}


class DiffusionTask:
    """DDPM objective (noise prediction) with optional distillation to the teacher's prediction.

    The task owns classifier-free label dropout (``label_dropout``, labels replaced by the null
    class ``num_classes``) so that student and teacher see the same labels.

    Args:
        diffusion: the ``DiffusionConfig``.
        noise_channels: channels of the data (the first output channels predict the noise).
        num_classes: label count; the null label is ``num_classes``.
        label_dropout: probability of dropping a label while training.
        eval_set: dataset of ``(latent, label)``, or None; evaluated as the denoising MSE at
            fixed noise and timesteps.
        eval_batch: evaluation batch per process.
    """

    name = "diffusion"

    def __init__(self, diffusion: DiffusionConfig, noise_channels: int, num_classes: int, label_dropout: float = 0.0,
                 eval_set=None, eval_batch: int = 256):
        self.diffusion, self.schedule = diffusion, NoiseSchedule(diffusion)
        self.noise_channels, self.num_classes, self.label_dropout = noise_channels, num_classes, label_dropout
        self.eval_set, self.eval_batch = eval_set, eval_batch

    def config_dict(self) -> dict:
        return {"name": self.name, **self.diffusion.__dict__, "label_dropout": self.label_dropout}

    def loss(self, model: nn.Module, batch, teacher: nn.Module | None) -> dict[str, torch.Tensor]:
        x0, labels = batch
        t = self.schedule.sample_timesteps(x0.shape[0], x0.device)  # (B,)
        noise = torch.randn_like(x0)
        if self.label_dropout > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        xt = self.schedule.add_noise(x0, noise, t)
        prediction = denoise(model, xt, t, labels)
        teacher_prediction = None
        if teacher is not None:
            with torch.no_grad():
                teacher_prediction = denoise(teacher, xt, t, labels)
        return diffusion_loss(prediction, noise, teacher_prediction, self.diffusion.distill_alpha, self.noise_channels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(EVAL_SEED)
        totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # squared-error sum, count
        for indices in torch.arange(len(self.eval_set)).split(self.eval_batch):
            x0, labels = collate(self.eval_set, indices)
            t = torch.randint(0, self.diffusion.steps, (x0.shape[0],), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            if indices[0] % ctx.world_size != ctx.rank:  # batches round-robin over processes
                continue
            x0, labels, t, noise = (v.to(ctx.device) for v in (x0, labels, t, noise))
            pred = denoise(model, self.schedule.add_noise(x0, noise, t), t, labels)[:, :self.noise_channels]
            totals[0] += (pred.float() - noise).pow(2).sum()
            totals[1] += noise.numel()
        model.train(was_training)
        err, count = all_reduce_sum(totals, ctx).tolist()
        return {"eval_mse": err / count}


def train_classifier(model: nn.Module, train_set, config: TrainConfig, *, teacher: nn.Module | None = None,
                     distill: DistillConfig = DistillConfig("none"), eval_set=None, extra_config: dict | None = None,
                     resume=None, stop_at: int | None = None) -> dict[str, float]:
    """Train a classifier (optionally distilled from ``teacher``); returns the final metrics.

    A model with a distillation token (``distilled_training`` attribute) is switched to return
    ``(cls, dist)`` logits while training, so the distillation term uses ``head_dist``.

    Example:
        >>> train_classifier(model, train_set, TrainConfig(steps=100, batch_size=64))  # doctest: +SKIP
    """
    if hasattr(model, "distilled_training"):
        model.distilled_training = distill.kind != "none"
    task = ClassificationTask(distill, eval_set)
    trainer = Trainer(model, task, train_set, config, teacher=teacher, extra_config=extra_config)
    return trainer.run(resume=resume, stop_at=stop_at)


def train_diffusion(model: nn.Module, train_set, config: TrainConfig, *, diffusion: DiffusionConfig = DiffusionConfig(),
                    teacher: nn.Module | None = None, eval_set=None, extra_config: dict | None = None,
                    resume=None, stop_at: int | None = None) -> dict[str, float]:
    """Train a class-conditional diffusion model; returns the final metrics.

    The model is called through its adapter (``bitlower.runtime.find_adapter``): bitlower's DiT as
    ``model(x, t, y)``, diffusers' ``DiTTransformer2DModel`` as ``(hidden_states, timestep,
    class_labels)``. The model's own label dropout (the adapter's ``label_dropout_modules``) is
    taken over by the task and set to 0 in the model while it trains, so the teacher sees the
    labels the student saw; the model's values are restored afterwards, so a later call (resume,
    QAT of a copy) drops labels alike.
    """
    adapter = find_adapter(model)
    embedders = adapter.label_dropout_modules(model)
    saved = [float(m.dropout_prob) for m in embedders]
    label_dropout = max(saved, default=0.0)
    noise_channels, num_classes = adapter.diffusion_io(model)
    task = DiffusionTask(diffusion, noise_channels, num_classes, label_dropout, eval_set)
    for m in embedders:
        m.dropout_prob = 0.0
    try:
        trainer = Trainer(model, task, train_set, config, teacher=teacher, extra_config=extra_config)
        return trainer.run(resume=resume, stop_at=stop_at)
    finally:
        for m, prob in zip(embedders, saved):
            m.dropout_prob = prob
