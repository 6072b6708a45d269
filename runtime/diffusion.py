"""DDPM noise schedules, forward noising and a DDIM sampler with classifier-free guidance.

Notation: ``T`` training steps (1000), ``beta_t`` the schedule, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``,
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``. The model predicts ``eps``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine")
LINEAR_BETA_START = 1e-4  # DDPM (Ho et al. 2020) and DiT: betas from 1e-4 to 0.02 over 1000 steps
LINEAR_BETA_END = 0.02
COSINE_OFFSET = 0.008  # Nichol & Dhariwal 2021: s = 0.008 keeps beta_1 from being too small
COSINE_MAX_BETA = 0.999  # ... and betas are clipped at 0.999 to avoid a singularity at t = T


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule, loss mix and sampler settings.

    Args:
        schedule: ``"linear"`` or ``"cosine"``.
        steps: training timesteps ``T``.
        sample_steps: DDIM steps used for sampling.
        eta: DDIM stochasticity (0 deterministic, 1 DDPM-like).
        cfg_scale: classifier-free guidance scale for sampling (1 = off; needs ``forward_with_cfg``).
        distill_alpha: weight of the teacher term in the loss (see ``distill.diffusion_loss``).

    Raises:
        ValueError: an unknown schedule or out-of-range step counts.
    """

    schedule: str = "linear"
    steps: int = 1000
    sample_steps: int = 50
    eta: float = 0.0
    cfg_scale: float = 1.0
    distill_alpha: float = 0.5

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not 1 <= self.sample_steps <= self.steps:
            raise ValueError(f"need 1 <= sample_steps <= steps, got {self.sample_steps} and {self.steps}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")


def make_betas(schedule: str, steps: int) -> torch.Tensor:
    """float64 ``(T,)`` betas of a linear or cosine schedule."""
    if schedule == "linear":
        return torch.linspace(LINEAR_BETA_START, LINEAR_BETA_END, steps, dtype=torch.float64)
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2  # alpha_bar up to scale
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=COSINE_MAX_BETA)


class NoiseSchedule:
    """``alpha_bar`` table and the forward process ``q(x_t | x_0)``.

    Example:
        >>> sched = NoiseSchedule(DiffusionConfig())
        >>> x0 = torch.zeros(2, 4, 8, 8)
        >>> sched.add_noise(x0, torch.randn_like(x0), torch.tensor([0, 999])).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.betas = make_betas(config.schedule, config.steps)  # (T,) float64
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)  # (T,) float64

    def _at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = self.alpha_bar.to(like.device)[t].to(like.dtype)  # (B,)
        return values.view(-1, *([1] * (like.dim() - 1)))  # (B, 1, 1, 1)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise``."""
        ab = self._at(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def sample_timesteps(self, batch: int, device) -> torch.Tensor:
        """Uniform ``t`` in ``[0, T)`` from the global RNG (so checkpoints restore it)."""
        return torch.randint(0, self.config.steps, (batch,), device=device)


def _predict_eps(model, x, t, y, cfg_scale: float, channels: int) -> torch.Tensor:
    if cfg_scale != 1.0 and hasattr(model, "forward_with_cfg"):
        null = torch.full_like(y, model.config.num_classes)
        out = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), cfg_scale)
        return out[: x.shape[0], :channels]
    return model(x, t, y)[:, :channels]


@torch.no_grad()
def ddim_sample(model, schedule: NoiseSchedule, shape, labels: torch.Tensor, generator=None) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) over ``sample_steps`` evenly spaced timesteps.

    Args:
        model: ``model(x, t, y)`` predicting noise in its first ``shape[1]`` channels.
        schedule: the training ``NoiseSchedule``.
        shape: ``(B, C, H, W)`` of the samples.
        labels: ``(B,)`` class labels.
        generator: random source of the initial noise (and of the noise when ``eta > 0``).

    Returns:
        ``x_0`` samples, ``shape``.
    """
    cfg = schedule.config
    device = labels.device
    x = torch.randn(shape, generator=generator, device=device)
    times = torch.linspace(cfg.steps - 1, 0, cfg.sample_steps, dtype=torch.float64).round().long().tolist()
    alpha_bar = schedule.alpha_bar
    for i, t in enumerate(times):
        ab = float(alpha_bar[t])
        ab_prev = float(alpha_bar[times[i + 1]]) if i + 1 < len(times) else 1.0
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        eps = _predict_eps(model, x, t_batch, labels, cfg.cfg_scale, shape[1]).float()
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        sigma = cfg.eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=device)
    return x
