"""BinaryFormer's convolutional segmentation decoder (seed 001, Appendix A.1).

The seed describes it as: "to increase the resolution by 8x we employ three blocks with
transposed convolutions with stride 2. The input channel dimension of 384 is expanded to 1024
and halved at each resolution. Each decoder block comprises pixel-shuffle and pixel-unshuffle
blocks with a residual 1x1 convolution part to mainly restrict the learning on the localised
patches. For the last resolution only, we use two standard 3x3 convolutions to reduce block
artefacts." The layer order below follows the authors' public script (``seg2d_dino_12k.py``):

- ``stem``: 1x1 conv C -> W, BatchNorm, ReLU, 1x1 conv W -> W (W = ``width``, 1024).
- ``ups[i]`` at width ``c = W / 2**i``: ``x = x + shuffle(x)`` (pixel-shuffle to c/4 channels
  at twice the resolution, 1x1 c/4 -> c, BN, ReLU, 1x1 c -> c/4, pixel-unshuffle back), then
  ``x = up(x + local(x))`` (``local``: 1x1 c -> c, BN, ReLU, 1x1; ``up``: 2x2 transposed
  convolution, stride 2, c -> c/2).
- ``refine`` at the last resolution (width c_L = W / 2**L): ``x = x + conv3(x)`` (3x3 c_L ->
  2 c_L, BN, ReLU, 3x3 2 c_L -> c_L), then ``x = x + local(x)`` (1x1 c_L -> 2 c_L, BN, ReLU, 1x1).
- ``head``: 1x1 c_L -> c_L, BN, ReLU, 1x1 c_L -> classes.
"""

from __future__ import annotations

import torch
from torch import nn

SHUFFLE = 2  # pixel-shuffle factor inside each block, and the stride of each transposed conv


def _pointwise(c_in: int, c_mid: int, c_out: int, kernel: int = 1) -> nn.Sequential:
    """conv(c_in -> c_mid) -> BatchNorm -> ReLU -> conv(c_mid -> c_out), 'same' padding."""
    pad = kernel // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, kernel, padding=pad),
        nn.BatchNorm2d(c_mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, kernel, padding=pad),
    )


class ShuffleResidual(nn.Module):
    """Residual 1x1 convolutions on the pixel-shuffled map: (B, c, h, w) -> (B, c, h, w).

    Shuffling to (B, c/4, 2h, 2w) makes each 1x1 convolution mix only the 2x2 sub-pixels of one
    location, so the branch learns within a patch (the seed's "localised patches").
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = channels // SHUFFLE**2
        self.shuffle = nn.PixelShuffle(SHUFFLE)
        self.mix = _pointwise(inner, channels, inner)
        self.unshuffle = nn.PixelUnshuffle(SHUFFLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(x)  # (B, c/4, 2h, 2w)
        y = self.mix(y)  # (B, c/4, 2h, 2w)
        return x + self.unshuffle(y)  # (B, c, h, w)


class UpBlock(nn.Module):
    """One decoder resolution: shuffle residual, 1x1 residual, 2x up: (B, c, h, w) -> (B, c/2, 2h, 2w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shuffle = ShuffleResidual(channels)
        self.local = _pointwise(channels, channels, channels)
        self.up = nn.ConvTranspose2d(channels, channels // 2, SHUFFLE, stride=SHUFFLE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuffle(x)  # (B, c, h, w)
        return self.up(x + self.local(x))  # (B, c/2, 2h, 2w)


class Refine(nn.Module):
    """Last resolution: residual 3x3 pair and residual 1x1 pair, (B, c, H, W) -> (B, c, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = _pointwise(channels, 2 * channels, channels, kernel=3)
        self.local = _pointwise(channels, 2 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv3(x)  # (B, c, H, W)
        return x + self.local(x)  # (B, c, H, W)


class SegmentationDecoder(nn.Module):
    """Patch features (B, C, Gh, Gw) -> per-pixel logits (B, K, Gh * 2**L, Gw * 2**L).

    Args:
        in_channels: C, the encoder's token width.
        num_classes: K.
        width: channels after the stem (1024 in the seed), halved at every resolution.
        num_up: L, the number of 2x up-sampling blocks (3 for patch 8).

    Raises:
        ValueError: a non-positive size, or a width that cannot be halved L times and still
            be pixel-shuffled (``width / 2**(L-1)`` must be a multiple of 4).

    Example:
        >>> dec = SegmentationDecoder(32, 5, width=64, num_up=2)
        >>> dec(torch.zeros(2, 32, 3, 4)).shape
        torch.Size([2, 5, 12, 16])
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 1024, num_up: int = 3) -> None:
        super().__init__()
        if min(in_channels, num_classes, width, num_up) < 1:
            raise ValueError(
                f"in_channels={in_channels}, num_classes={num_classes}, width={width} and "
                f"num_up={num_up} must be positive"
            )
        last_block = width // 2 ** (num_up - 1)
        if width % 2**num_up or last_block % SHUFFLE**2:
            raise ValueError(
                f"decoder width={width} must divide by 2**num_up={2**num_up} with width/2**(num_up-1) "
                f"a multiple of {SHUFFLE**2} (pixel shuffle)"
            )
        self.num_up = num_up
        self.stem = _pointwise(in_channels, width, width)
        self.ups = nn.ModuleList(UpBlock(width // 2**i) for i in range(num_up))
        out = width // 2**num_up
        self.refine = Refine(out)
        self.head = _pointwise(out, out, num_classes)

    @property
    def scale(self) -> int:
        """Output pixels per feature-grid cell along each side (2**L)."""
        return 2**self.num_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, W, Gh, Gw)
        for block in self.ups:
            x = block(x)  # (B, c/2, 2h, 2w)
        return self.head(self.refine(x))  # (B, K, Gh*2**L, Gw*2**L)
