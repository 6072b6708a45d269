"""Inpainting and synthesis with a trained VQ-AE and absorbing transformer, scored as in Table 3.

Inpainting: the codes of a test volume (its VQ-AE encoding) are masked on a centred box of the
latent grid (``center_box_mask``, by default half of every side: 1/8 of the tokens) and filled by
``sample_codes``; PSNR and SSIM (3D, data range 1) compare the decoded result with the decoded
unmasked codes (the ground-truth reconstruction), over the whole volume, per volume. The "random"
row of the seed's table, the VQ-AE alone, fills the box with uniformly random codes instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bitlower.models.volume_metrics import psnr, ssim

from .absorbing import AbsorbingDiffusionConfig, center_box_mask, sample_codes

DEFAULT_FRACTION = 0.5  # side fraction of the inpainted box


@dataclass
class InpaintResult:
    """Per-volume scores and the codes behind them.

    Attributes:
        psnr, ssim: (V,) float64.
        codes: (V, N, G) the filled codes.
        region: (N,) bool, the inpainted tokens.
    """

    psnr: torch.Tensor
    ssim: torch.Tensor
    codes: torch.Tensor
    region: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.mean()), "ssim": float(self.ssim.mean())}


def _grid_codes(codes: torch.Tensor, grid) -> torch.Tensor:
    return codes.reshape(codes.shape[0], *grid, codes.shape[-1])  # (V, Ld, Lh, Lw, G)


@torch.no_grad()
def score_codes(vqae: nn.Module, filled: torch.Tensor, truth: torch.Tensor, grid, batch: int = 1):
    """PSNR and SSIM (V,) of ``decode(filled)`` against ``decode(truth)``, both (V, N, G)."""
    device = next(vqae.parameters()).device
    scores = []
    for f, t in zip(filled.split(batch), truth.split(batch)):
        a = vqae.decode_codes(_grid_codes(f, grid).to(device)).float().clamp(0, 1)  # (b, 1, D, H, W)
        b = vqae.decode_codes(_grid_codes(t, grid).to(device)).float().clamp(0, 1)
        scores.append(torch.stack([psnr(a, b, reduction="none"), ssim(a, b, reduction="none")], 1).cpu())
    scores = torch.cat(scores)  # (V, 2)
    return scores[:, 0], scores[:, 1]


def random_fill(codes: torch.Tensor, region: torch.Tensor, size: int, generator=None) -> torch.Tensor:
    """``codes`` (V, N, G) with uniformly random codes in ``[0, size)`` on ``region`` (N,)."""
    noise = torch.randint(0, size, codes.shape, generator=generator, device=codes.device)
    return torch.where(region.to(codes.device)[None, :, None], noise, codes)


@torch.no_grad()
def inpaint(vqae: nn.Module, transformer: nn.Module | None, codes: torch.Tensor, grid,
            config: AbsorbingDiffusionConfig = AbsorbingDiffusionConfig(), fraction: float = DEFAULT_FRACTION,
            seed: int = 0, batch: int = 4) -> InpaintResult:
    """Inpaint the centre box of every code grid (V, N, G) and score it; ``transformer=None`` is the
    VQ-AE-only ("random") baseline.

    The transformer runs on the VQ-AE's device, ``batch`` volumes at a time, with a generator seeded
    by ``seed`` (the same reveal order and noise for every method given the same seed).
    """
    device = next(vqae.parameters()).device
    region = center_box_mask(grid, fraction)  # (N,)
    gen = torch.Generator(device=device).manual_seed(seed)
    size = vqae.config.codebook_size
    parts = []
    for part in codes.split(batch):
        part = part.to(device)
        if transformer is None:
            parts.append(random_fill(part, region, size, gen).cpu())
            continue
        filled = sample_codes(transformer.eval(), tuple(part.shape), transformer.mask_id, config, known=part,
                              known_mask=~region.to(device), generator=gen)
        parts.append(filled.cpu())
    filled = torch.cat(parts)
    p, s = score_codes(vqae, filled, codes, grid, batch=1)
    return InpaintResult(p, s, filled, region)


@torch.no_grad()
def synthesize(transformer: nn.Module, count: int, config: AbsorbingDiffusionConfig = AbsorbingDiffusionConfig(),
               seed: int = 0, batch: int = 4, device=None) -> torch.Tensor:
    """``count`` unconditional code grids (count, N, G), ``batch`` at a time."""
    device = device or next(transformer.parameters()).device
    cfg = transformer.config
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, count, batch):
        shape = (min(batch, count - start), cfg.num_tokens, cfg.codebook_heads)
        out.append(sample_codes(transformer.eval(), shape, transformer.mask_id, config, generator=gen,
                                device=device).cpu())
    return torch.cat(out)
