"""Trainer tasks of the 3D VQ diffusion system: the VQ auto-encoder and the absorbing transformer.

``VQAE3DTask`` trains ``models.VQAutoEncoder3D`` on patches (L1 + commitment + slice-perceptual;
the codebooks learn by EMA inside the forward) and evaluates whole test volumes encoded patch by
patch (PSNR, SSIM). ``AbsorbingTask`` trains ``models.AbsorbingTransformer3D`` on the codes of
whole volumes (``encode_volumes`` with a trained, frozen VQ-AE) and evaluates the loss, the
masked-token cross-entropy and accuracy at fixed times and masks. Both run in the shared
``Trainer`` (AMP, AdamW, EMA, DDP, atomic checkpoints, exact resume, metrics).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bitlower.models.slice_perceptual import KINDS as PERCEPTUAL_KINDS
from bitlower.models.slice_perceptual import SlicePerceptualLoss
from bitlower.models.volume_metrics import psnr, ssim

from .absorbing import AbsorbingDiffusionConfig, absorbing_loss, q_sample, sample_time
from .distributed import DistContext, all_reduce_sum, collate
from .trainer import TrainConfig, Trainer

EVAL_SEED = 1234  # fixed times and masks of the absorbing evaluation, the same at every eval


@dataclass(frozen=True)
class VQAELossConfig:
    """Weights of the VQ-AE loss ``l1_weight * L1 + commitment + perceptual_weight * perceptual``.

    Args:
        l1_weight: weight of the mean absolute reconstruction error.
        perceptual: ``"random"``, ``"ssim"`` or ``"none"`` (``models.slice_perceptual``).
        perceptual_weight: weight of the slice-perceptual term.

    Raises:
        ValueError: a negative weight or an unknown perceptual kind.
    """

    l1_weight: float = 1.0
    perceptual: str = "random"
    perceptual_weight: float = 0.1

    def __post_init__(self):
        if self.l1_weight < 0 or self.perceptual_weight < 0:
            raise ValueError(f"weights must be >= 0, got {self.l1_weight}, {self.perceptual_weight}")
        if self.perceptual not in PERCEPTUAL_KINDS:
            raise ValueError(f"perceptual must be one of {list(PERCEPTUAL_KINDS)}, got {self.perceptual!r}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP and ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class VQAE3DTask:
    """Patch reconstruction loss; PSNR/SSIM of whole test volumes.

    Args:
        loss: the ``VQAELossConfig``.
        eval_set: dataset of ``(volume (1, D, H, W),)``, or None.
        eval_batch: volumes per evaluation call.
    """

    name = "vqae3d"

    def __init__(self, loss: VQAELossConfig = VQAELossConfig(), eval_set=None, eval_batch: int = 1):
        self.loss_config, self.eval_set, self.eval_batch = loss, eval_set, eval_batch
        self.perceptual = SlicePerceptualLoss(loss.perceptual)

    def config_dict(self) -> dict:
        return {"name": self.name, **asdict(self.loss_config)}

    def loss(self, model: nn.Module, batch, teacher: nn.Module | None) -> dict[str, torch.Tensor]:
        (x,) = batch  # (B, 1, P, P, P)
        out = model(x)
        l1 = (out["recon"].float() - x).abs().mean()
        index = torch.randint(0, x.shape[-1], (3,))  # slice positions from the global RNG (restored on resume)
        perceptual = self.perceptual.to(x.device)(out["recon"], x, index)
        cfg = self.loss_config
        loss = cfg.l1_weight * l1 + out["commitment"] + cfg.perceptual_weight * perceptual
        return {"loss": loss, "l1": l1, "commitment": out["commitment"], "perceptual": perceptual,
                "perplexity": out["perplexity"]}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # psnr, ssim, l1 sums, count
        for indices in torch.arange(ctx.rank, len(self.eval_set), ctx.world_size).split(self.eval_batch):
            (x,) = (t.to(ctx.device) for t in collate(self.eval_set, indices))
            recon = _unwrap(model).reconstruct_volume(x).float()
            totals[0] += psnr(recon, x, reduction="none").sum()
            totals[1] += ssim(recon, x, reduction="none").sum()
            totals[2] += (recon - x).abs().flatten(1).mean(1).sum()
            totals[3] += x.shape[0]
        model.train(was_training)
        p, s, l1, count = all_reduce_sum(totals, ctx).tolist()
        return {"psnr": p / count, "ssim": s / count, "eval_l1": l1 / count}


class AbsorbingTask:
    """Absorbing-diffusion loss on code grids; loss, cross-entropy and accuracy at fixed masks.

    Args:
        diffusion: the ``AbsorbingDiffusionConfig``.
        eval_set: dataset of ``(codes (N, G),)``, or None.
        eval_batch: evaluation batch per process.
    """

    name = "absorbing"

    def __init__(self, diffusion: AbsorbingDiffusionConfig = AbsorbingDiffusionConfig(), eval_set=None,
                 eval_batch: int = 16):
        self.diffusion, self.eval_set, self.eval_batch = diffusion, eval_set, eval_batch

    def config_dict(self) -> dict:
        return {"name": self.name, **asdict(self.diffusion)}

    def _loss(self, model, codes, generator=None) -> dict[str, torch.Tensor]:
        steps = self.diffusion.steps
        mask_id = _unwrap(model).mask_id
        t = sample_time(codes.shape[0], steps, codes.device, generator)  # (B,)
        x_t, mask = q_sample(codes, t, steps, mask_id, generator)
        return absorbing_loss(model(x_t), codes, mask, t, steps, self.diffusion.loss)

    def loss(self, model: nn.Module, batch, teacher: nn.Module | None) -> dict[str, torch.Tensor]:
        (codes,) = batch  # (B, N, G)
        return self._loss(model, codes)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: DistContext) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        was_training = model.training
        model.eval()
        gen = torch.Generator(device=ctx.device).manual_seed(EVAL_SEED)
        totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, ce, accuracy sums, batches
        for n, indices in enumerate(torch.arange(len(self.eval_set)).split(self.eval_batch)):
            (codes,) = (t.to(ctx.device) for t in collate(self.eval_set, indices))
            out = self._loss(model, codes, gen)  # every process draws every batch's masks: same masks anywhere
            if n % ctx.world_size != ctx.rank:
                continue
            totals += torch.stack([out["loss"], out["ce"], out["accuracy"], torch.ones(())]).double().to(ctx.device)
        model.train(was_training)
        loss, ce, acc, count = all_reduce_sum(totals, ctx).tolist()
        return {"eval_loss": loss / count, "eval_ce": ce / count, "eval_accuracy": acc / count}


@torch.no_grad()
def encode_volumes(vqae: nn.Module, volumes, device=None, batch: int = 1) -> TensorDataset:
    """Codes of every volume of a dataset of ``(volume (1, D, H, W),)``: ``TensorDataset`` of (V, N, G) int64.

    The VQ-AE runs in eval mode on ``device`` (default: where its parameters are); the codes live on the CPU.
    """
    device = device or next(vqae.parameters()).device
    was_training = vqae.training
    vqae.eval().to(device)
    codes = []
    for indices in torch.arange(len(volumes)).split(batch):
        (x,) = collate(volumes, indices)
        grid = vqae.encode_volume(x.to(device))  # (b, Ld, Lh, Lw, G)
        codes.append(grid.reshape(grid.shape[0], -1, grid.shape[-1]).cpu())  # (b, N, G)
    vqae.train(was_training)
    return TensorDataset(torch.cat(codes))


def train_vqae3d(model: nn.Module, train_set, config: TrainConfig, *, loss: VQAELossConfig = VQAELossConfig(),
                 eval_set=None, extra_config: dict | None = None, resume=None,
                 stop_at: int | None = None) -> dict[str, float]:
    """Train a ``VQAutoEncoder3D`` on a dataset of ``(patch (1, P, P, P),)``; returns the final metrics.

    Example:
        >>> train_vqae3d(model, PhantomPatches(cfg, "train", 32), TrainConfig(steps=100, batch_size=8))  # doctest: +SKIP
    """
    task = VQAE3DTask(loss, eval_set)
    trainer = Trainer(model, task, train_set, config, extra_config=extra_config)
    return trainer.run(resume=resume, stop_at=stop_at)


def train_absorbing(model: nn.Module, train_set, config: TrainConfig, *,
                    diffusion: AbsorbingDiffusionConfig = AbsorbingDiffusionConfig(), eval_set=None,
                    extra_config: dict | None = None, resume=None, stop_at: int | None = None) -> dict[str, float]:
    """Train an ``AbsorbingTransformer3D`` (full precision or binarized) on code grids ``(codes (N, G),)``.

    Example:
        >>> train_absorbing(model, encode_volumes(vqae, volumes), TrainConfig(steps=100, batch_size=12))  # doctest: +SKIP
    """
    task = AbsorbingTask(diffusion, eval_set)
    trainer = Trainer(model, task, train_set, config, extra_config=extra_config)
    return trainer.run(resume=resume, stop_at=stop_at)
