"""PSNR and SSIM of 2D images or 3D volumes (the metrics of BinaryFormer Table 3).

SSIM follows Wang et al. 2004: an 11-tap Gaussian window of sigma 1.5 along every spatial axis
(separable, truncated at radius 5 and renormalised), ``K1 = 0.01``, ``K2 = 0.03``, population
(co)variances, averaged over the positions where the whole window fits (no padding). That is
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L)`` extended to 3D.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WIN_SIZE = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WIN_SIZE, sigma: float = SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (size,), float64."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return w / w.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of (N, C, *S) along each of its 2 or 3 spatial axes."""
    nd, c = x.dim() - 2, x.shape[1]
    conv = F.conv2d if nd == 2 else F.conv3d
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = window.numel()
        kernel = window.to(x).view(1, 1, *shape).expand(c, 1, *shape)  # (C, 1, k, 1[, 1]) along ``axis``
        x = conv(x, kernel, groups=c)
    return x


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"the two inputs must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() not in (4, 5):
        raise ValueError(f"expected (N, C, H, W) or (N, C, D, H, W), got {tuple(x.shape)}")


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = WIN_SIZE,
         sigma: float = SIGMA, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of images (N, C, H, W) or volumes (N, C, D, H, W).

    Args:
        data_range: L, the value range (1 for data in [0, 1]).
        win_size: Gaussian window taps (odd); every spatial side must be at least this.
        reduction: ``"mean"`` (scalar) or ``"none"`` (per item, (N,)).

    Raises:
        ValueError: mismatched shapes, a bad window, a side shorter than the window.

    Example:
        >>> x = torch.rand(1, 1, 16, 16, 16)
        >>> float(ssim(x, x))
        1.0
    """
    _check(x, y)
    if win_size < 1 or win_size % 2 == 0 or min(x.shape[2:]) < win_size:
        raise ValueError(f"win_size must be odd and at most the smallest side {min(x.shape[2:])}, got {win_size}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    x, y = x.double(), y.double()
    w = gaussian_window(win_size, sigma)
    mu_x, mu_y = _blur(x, w), _blur(y, w)
    var_x = _blur(x * x, w) - mu_x ** 2
    var_y = _blur(y * y, w) - mu_y ** 2
    cov = _blur(x * y, w) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    per_item = s.flatten(1).mean(1)  # (N,)
    return per_item.mean() if reduction == "mean" else per_item


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(L^2 / MSE)`` in dB, per item (N,) or averaged over items.

    Example:
        >>> round(float(psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5))), 6)
        6.0206
    """
    if x.shape != y.shape:
        raise ValueError(f"the two inputs must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)  # (N,)
    per_item = 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-30))
    return per_item.mean() if reduction == "mean" else per_item


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """``10 log10(L^2 / mse)``."""
    return 10 * math.log10(data_range ** 2 / mse)
