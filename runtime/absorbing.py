"""Absorbing-state (masked-token) diffusion over multi-head VQ codes: forward process, loss, sampler.

Notation (Bond-Taylor et al. 2022, "Unleashing Transformers"): codes ``x_0`` (B, N, G), ``T`` time
steps (256 in BinaryFormer), ``t ~ U{1..T}``; ``q(x_t | x_0)`` replaces each token (all G sub-codes at
once) by the absorbing state ``K`` with probability ``t / T``. The model predicts every token's G
sub-codes in parallel; a token's cross-entropy is the mean of its G sub-code cross-entropies
(BinaryFormer A.2: "the average of 8 cross-entropy scores"), summed over the masked tokens.

Losses per item (``CE`` = that sum, ``N`` tokens): ``"reweighted_elbo"`` (the paper's default)
``(1 - t/T) CE / (N ln 2)``; ``"elbo"`` ``T CE / (t N ln 2)`` (uniform ``t``, ``p(t) = 1/T``);
``"mlm"`` ``CE / #masked``.

Sampling (their ``sample``): from all-masked (or, to inpaint, masked only where asked) codes, for
``t = S .. 1`` every still-masked token is revealed with probability ``1/t`` and gets a sample of the
model's categorical at temperature ``tau`` (BinaryFormer: S = 200, tau = 0.8). At ``t = 1`` every
remaining token is revealed, so every masked token is filled and no known token is ever changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_KINDS = ("reweighted_elbo", "elbo", "mlm")


@dataclass(frozen=True)
class AbsorbingDiffusionConfig:
    """Time steps, loss weighting and sampler settings.

    Args:
        steps: T, training time steps.
        sample_steps: S, sampling steps (``1 <= S``).
        temperature: tau, the sampling temperature (> 0).
        loss: ``"reweighted_elbo"``, ``"elbo"`` or ``"mlm"``.

    Raises:
        ValueError: an out-of-range value or an unknown loss.
    """

    steps: int = 256
    sample_steps: int = 200
    temperature: float = 0.8
    loss: str = "reweighted_elbo"

    def __post_init__(self):
        if self.steps < 1 or self.sample_steps < 1:
            raise ValueError(f"steps and sample_steps must be >= 1, got {self.steps}, {self.sample_steps}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {list(LOSS_KINDS)}, got {self.loss!r}")


def sample_time(batch: int, steps: int, device, generator=None) -> torch.Tensor:
    """``t ~ U{1..T}``, (B,) int64 (the global RNG unless ``generator`` is given)."""
    return torch.randint(1, steps + 1, (batch,), device=device, generator=generator)


def q_sample(codes: torch.Tensor, t: torch.Tensor, steps: int, mask_id: int, generator=None):
    """Mask each token of ``codes`` (B, N, G) with probability ``t / T``.

    Returns:
        ``x_t`` (B, N, G) with masked tokens set to ``mask_id`` in every sub-code, and ``mask`` (B, N) bool.
    """
    u = torch.rand(codes.shape[:2], device=codes.device, generator=generator)  # (B, N)
    mask = u < (t.float() / steps).unsqueeze(-1)
    return codes.masked_fill(mask.unsqueeze(-1), mask_id), mask


def absorbing_loss(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, steps: int,
                   kind: str = "reweighted_elbo") -> dict[str, torch.Tensor]:
    """The loss of one batch.

    Args:
        logits: (B, N, G, K) predictions.
        codes: (B, N, G) the clean codes ``x_0``.
        mask: (B, N) bool, the tokens that were masked.
        t: (B,) the time steps that masked them.

    Returns:
        ``loss`` (batch mean of the weighted per-item loss), ``ce`` (mean cross-entropy of a masked
        token, nats) and ``accuracy`` (fraction of masked sub-codes predicted exactly by argmax).
    """
    b, n, g, k = logits.shape
    ce = F.cross_entropy(logits.float().reshape(-1, k), codes.reshape(-1), reduction="none")  # (B*N*G,)
    token_ce = ce.view(b, n, g).mean(-1)  # (B, N): the average over the G sub-codebooks
    maskf = mask.float()
    ce_sum = (token_ce * maskf).sum(1)  # (B,)
    masked = maskf.sum(1)  # (B,)
    tf = t.float()
    if kind == "reweighted_elbo":
        per_item = (1 - tf / steps) * ce_sum / (n * math.log(2))
    elif kind == "elbo":
        per_item = steps * ce_sum / (tf * n * math.log(2))
    elif kind == "mlm":
        per_item = ce_sum / masked.clamp_min(1)
    else:
        raise ValueError(f"loss must be one of {list(LOSS_KINDS)}, got {kind!r}")
    hits = (logits.argmax(-1) == codes).float().mean(-1)  # (B, N)
    total = masked.sum().clamp_min(1)
    return {"loss": per_item.mean(), "ce": ce_sum.sum() / total, "accuracy": (hits * maskf).sum() / total}


def center_box_mask(grid: tuple[int, int, int], fraction: float = 0.5, device=None) -> torch.Tensor:
    """(N,) bool, True on a centred box of ``round(fraction * side)`` tokens per axis (row-major order).

    The seed's 10 x 14 x 12 grid at 0.5 gives a 5 x 7 x 6 box: 210 of 1680 tokens (1/8 of the volume).

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    axes = []
    for side in grid:
        size = max(1, round(fraction * side))
        start = (side - size) // 2
        axes.append((torch.arange(side, device=device) >= start) & (torch.arange(side, device=device) < start + size))
    box = axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]  # (Ld, Lh, Lw)
    return box.reshape(-1)  # (N,)


def _gumbel_sample(logits: torch.Tensor, generator) -> torch.Tensor:
    """Categorical samples over the last axis: ``argmax(logits + Gumbel noise)``."""
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


@torch.no_grad()
def sample_codes(model, shape: tuple[int, int, int], mask_id: int, config: AbsorbingDiffusionConfig,
                 known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None, generator=None,
                 device=None) -> torch.Tensor:
    """Unconditional samples, or inpainting where ``known_mask`` is False.

    Args:
        model: ``model(codes (B, N, G)) -> logits (B, N, G, K)``.
        shape: (B, N, G).
        mask_id: K, the absorbing state.
        known: (B, N, G) codes to keep where ``known_mask`` is True (inpainting), or None.
        known_mask: (B, N) or (N,) bool, True where ``known`` is kept.
        generator: random source of the reveal order and the samples (on ``device``).

    Returns:
        codes (B, N, G) without any ``mask_id``.
    """
    device = known.device if known is not None else device
    x = torch.full(shape, mask_id, dtype=torch.long, device=device)
    revealed = torch.zeros(shape[:2], dtype=torch.bool, device=device)  # (B, N)
    if known is not None:
        revealed = known_mask.to(device).expand(shape[:2]).clone()
        x = torch.where(revealed.unsqueeze(-1), known.to(device), x)
    for t in range(config.sample_steps, 0, -1):
        changes = torch.rand(shape[:2], device=device, generator=generator) < 1.0 / t  # (B, N)
        changes &= ~revealed
        revealed |= changes
        if not bool(changes.any()):
            continue
        logits = model(x).float() / config.temperature  # (B, N, G, K)
        x = torch.where(changes.unsqueeze(-1), _gumbel_sample(logits, generator), x)
    return x
