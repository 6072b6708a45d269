"""Pixel transformer: every pixel is a token (BinaryFormer's pixel-wise classifier).

A token is the pixel's channels plus its two coordinates normalised to [-1, 1]; one Linear
lifts those ``C + 2`` numbers to the embed width (no patch embedding, no position table).
Attention narrows the value path to ``embed_dim / value_ratio`` channels (BinaryFormer uses a
4x reduction, so Dv = D/4). A max-pool over tokens feeds the classifier head.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import set_attention_metadata
from .layers import init_linear_trunc_normal, to_2tuple
from .vit import Block


@dataclass(frozen=True)
class PixelConfig:
    """Shape of a pixel transformer.

    Args:
        img_size: input height and width (int or pair); N = H * W tokens.
        in_chans: input channels C.
        num_classes: classifier outputs.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: heads per block.
        mlp_ratio: MLP hidden width / embed width.
        value_ratio: embed width / value width (4 in BinaryFormer).
    """

    img_size: int | tuple[int, int] = 32
    in_chans: int = 3
    num_classes: int = 10
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    value_ratio: int = 4

    def __post_init__(self) -> None:
        if self.embed_dim % self.value_ratio:
            raise ValueError(
                f"value_ratio={self.value_ratio} must divide embed_dim={self.embed_dim}"
            )

    @property
    def value_dim(self) -> int:
        return self.embed_dim // self.value_ratio


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """Row-major (y, x) coordinates of an H x W grid, each in [-1, 1]: shape (H*W, 2)."""
    ys = torch.linspace(-1.0, 1.0, height) if height > 1 else torch.zeros(1)
    xs = torch.linspace(-1.0, 1.0, width) if width > 1 else torch.zeros(1)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([grid_y, grid_x], dim=-1).reshape(height * width, 2)  # (H*W, 2)


class PixelTransformer(nn.Module):
    """Classifier over pixel tokens with reduced value channels and a max-pool head.

    Args:
        config: a ``PixelConfig``.

    Raises:
        ValueError: in ``forward``, if the input's size or channels differ from the config.

    Example:
        >>> cfg = PixelConfig(img_size=8, in_chans=1, embed_dim=32, depth=1, num_heads=2)
        >>> PixelTransformer(cfg)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        self.config = config
        self.grid_size = to_2tuple(config.img_size)
        self.num_prefix_tokens = 0
        coords = pixel_coordinates(*self.grid_size)  # (N, 2)
        self.register_buffer("coords", coords, persistent=False)
        self.pixel_embed = nn.Linear(config.in_chans + 2, config.embed_dim)
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.num_heads, config.mlp_ratio, value_dim=config.value_dim)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        set_attention_metadata(self, self.grid_size, num_prefix_tokens=0)
        self.apply(init_linear_trunc_normal)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → pixel tokens (B, H*W, C+2): channels then (y, x)."""
        if tuple(x.shape[1:]) != (self.config.in_chans, *self.grid_size):
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not match "
                f"(B, {self.config.in_chans}, {self.grid_size[0]}, {self.grid_size[1]})"
            )
        B = x.shape[0]
        pixels = x.flatten(2).transpose(1, 2)  # (B, N, C)
        coords = self.coords.to(x.dtype).expand(B, -1, -1)  # (B, N, 2)
        return torch.cat([pixels, coords], dim=-1)  # (B, N, C+2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → normalised tokens (B, N, embed_dim)."""
        h = self.pixel_embed(self.tokens(x))  # (B, N, E)
        for block in self.blocks:
            h = block(h)  # (B, N, E)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x).amax(dim=1)  # (B, E)
        return self.head(pooled)  # (B, K)


_PIXEL_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    # ViT-S/8 widths, the encoder BinaryFormer re-initialises.
    "small": dict(embed_dim=384, depth=12, num_heads=6),
}


def pixel_config(size: str, **overrides) -> PixelConfig:
    """Pixel transformer shape by size name (``tiny``, ``small``).

    Raises:
        KeyError: for an unknown size.
    """
    if size not in _PIXEL_SIZES:
        raise KeyError(f"unknown pixel transformer size {size!r}; known: {sorted(_PIXEL_SIZES)}")
    return replace(PixelConfig(**_PIXEL_SIZES[size]), **overrides)


def pixel_tiny(**overrides) -> PixelTransformer:
    """Pixel transformer, width 192, 12 blocks, 3 heads (D 64, Dv 16); default 32x32x3."""
    return PixelTransformer(pixel_config("tiny", **overrides))


def pixel_small(**overrides) -> PixelTransformer:
    """Pixel transformer, width 384, 12 blocks, 6 heads (D 64, Dv 16); default 32x32x3."""
    return PixelTransformer(pixel_config("small", **overrides))
