"""Perceptual term on three orthogonal slices of 3D patches, without downloaded weights.

BinaryFormer (Appendix A.2) adds a VGG perceptual loss on three orthogonal slices of the output
patches. VGG weights cannot be fetched here, so the features come from a fixed random convolutional
network instead: three 3x3 convolutions (1 -> 16 -> 32 -> 64 channels, the last two stride 2) with
ReLU, whose weights are drawn from ``torch.Generator().manual_seed(seed)`` with Kaiming-normal
scaling. They are a deterministic function of the seed (they ship as code, are never trained and are
not stored in checkpoints). Random convolutional features keep much of the structure that trained
features compare (He, Wang and Hopcroft 2016, "A powerful generative model using random weights for
the deep image representation"); like LPIPS, each layer's features are normalised to unit length
across channels per pixel and compared by mean squared difference, and the layers are summed.

``kind="ssim"`` uses ``1 - SSIM`` (2D, Gaussian window; 11 taps, fewer on slices under 11 pixels)
on the same slices instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .volume_metrics import WIN_SIZE, ssim

FEATURE_WIDTHS = (16, 32, 64)
STRIDES = (1, 2, 2)
KINDS = ("random", "ssim", "none")
FEATURE_SEED = 20240  # fixed: every run compares with the same random features


def orthogonal_slices(x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Three orthogonal slices of patches (B, C, P, P, P) -> (3B, C, P, P).

    Args:
        index: (3,) slice positions along D, H and W; default: the centre, ``P // 2``.
    """
    if index is None:
        index = torch.tensor([s // 2 for s in x.shape[2:]])
    i, j, k = (int(v) for v in index)
    return torch.cat([x[:, :, i], x[:, :, :, j], x[:, :, :, :, k]])  # (3B, C, P, P) for cubic patches


class RandomSliceFeatures(nn.Module):
    """The fixed random feature network; ``forward`` returns the per-layer feature maps."""

    def __init__(self, in_channels: int = 1, seed: int = FEATURE_SEED):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        cin, self.strides = in_channels, STRIDES
        for n, (cout, stride) in enumerate(zip(FEATURE_WIDTHS, STRIDES)):
            weight = torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (cin * 9)) ** 0.5  # Kaiming normal
            self.register_buffer(f"weight{n}", weight, persistent=False)
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for n, stride in enumerate(self.strides):
            x = F.relu(F.conv2d(x, getattr(self, f"weight{n}").to(x.dtype), stride=stride, padding=1))
            feats.append(x)
        return feats


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


class SlicePerceptualLoss(nn.Module):
    """Perceptual distance between two batches of 3D patches, on three orthogonal slices.

    Args:
        kind: ``"random"`` (fixed random features), ``"ssim"`` (``1 - SSIM``) or ``"none"`` (always 0).
        in_channels: image channels.

    Raises:
        ValueError: an unknown kind.

    Example:
        >>> loss = SlicePerceptualLoss()
        >>> x = torch.rand(2, 1, 8, 8, 8)
        >>> float(loss(x, x))
        0.0
    """

    def __init__(self, kind: str = "random", in_channels: int = 1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"perceptual kind must be one of {list(KINDS)}, got {kind!r}")
        self.kind = kind
        self.features = RandomSliceFeatures(in_channels) if kind == "random" else None

    def forward(self, recon: torch.Tensor, target: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "none":
            return recon.new_zeros(())
        a, b = orthogonal_slices(recon, index).float(), orthogonal_slices(target, index).float()  # (3B, C, P, P)
        if self.kind == "ssim":
            side = a.shape[-1] if a.shape[-1] % 2 else a.shape[-1] - 1
            return 1 - ssim(a, b, data_range=1.0, win_size=min(WIN_SIZE, side)).float()
        with torch.autocast(device_type=a.device.type, enabled=False):
            pairs = zip(self.features(a), self.features(b))
            return sum((_unit(fa) - _unit(fb)).pow(2).sum(1).mean() for fa, fb in pairs)
