"""Building blocks shared by the reference models: patch embedding, MLP, stochastic depth.

Parameter names follow the published ViT/DeiT/DiT checkpoints (``proj``, ``fc1``, ``fc2``) so
their state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def to_2tuple(value: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``(value, value)`` for an int, or the pair itself for a 2-sequence.

    Raises:
        ValueError: if a sequence does not have exactly two entries.
    """
    if isinstance(value, int):
        return (value, value)
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return (int(pair[0]), int(pair[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping patches lifted to ``embed_dim`` by one strided convolution.

    Args:
        img_size: input height and width (int or pair).
        patch_size: patch height and width (int or pair); must divide ``img_size``.
        in_chans: input channels.
        embed_dim: output channels per token.

    Raises:
        ValueError: if the patch size does not divide the image size.

    Example:
        >>> PatchEmbed(32, 8, 3, 16)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 16, 16])
    """

    def __init__(self, img_size, patch_size, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(
                f"patch size {self.patch_size} must divide image size {self.img_size}"
            )
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} does not match the model's {self.img_size}"
            )
        x = self.proj(x)  # (B, C, Gh, Gw)
        return x.flatten(2).transpose(1, 2)  # (B, Gh*Gw, C)


class Mlp(nn.Module):
    """Two linear layers with an activation between (``fc1`` → act → ``fc2``).

    Args:
        in_features: input and output width.
        hidden_features: hidden width.
        approximate: GELU approximation, ``"none"`` (ViT) or ``"tanh"`` (DiT).
    """

    def __init__(self, in_features: int, hidden_features: int, approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training.

    Args:
        prob: probability of dropping the branch; kept samples are scaled by ``1/(1-prob)``.
    """

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {prob}")
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, ..., 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


def init_linear_trunc_normal(module: nn.Module) -> None:
    """ViT/DeiT initialisation of a Linear: weight trunc-normal std 0.02, bias zero."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int,
) -> torch.Tensor:
    """Bicubically resize a learned position table to a new patch grid.

    Prefix rows (cls, distillation) are kept as they are. Used to load a checkpoint trained at
    one resolution into a model built for another.

    Args:
        pos_embed: table of shape (1, P + Gh*Gw, C).
        old_grid: the table's grid (Gh, Gw).
        new_grid: the target grid (Gh', Gw').
        num_prefix_tokens: P, rows before the grid.

    Raises:
        ValueError: if the table's length does not match ``old_grid`` and P.

    Example:
        >>> resample_pos_embed(torch.zeros(1, 1 + 4, 8), (2, 2), (3, 3), 1).shape
        torch.Size([1, 10, 8])
    """
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if pos_embed.shape[1] != expected:
        raise ValueError(
            f"pos_embed has {pos_embed.shape[1]} rows, expected {expected} "
            f"({num_prefix_tokens} prefix + grid {old_grid})"
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, C, Gh, Gw)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, Gh'*Gw', C)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine/cosine position table of shape (Gh*Gw, embed_dim), row-major tokens.

    Matches the table the public DiT checkpoints store: the first half of the channels encodes
    the column index, the second half the row index; each half is ``[sin, cos]`` over
    frequencies ``1 / 10000 ** (i / (embed_dim/4))``. Computed in float64, returned float32.

    Raises:
        ValueError: if ``embed_dim`` is not a multiple of 4.
    """
    if embed_dim % 4:
        raise ValueError(f"sincos embedding needs embed_dim divisible by 4, got {embed_dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64),
        torch.arange(grid_size[1], dtype=torch.float64),
        indexing="ij",
    )  # (Gh, Gw) each
    emb_col = _sincos_1d(embed_dim // 2, cols.reshape(-1))  # (Gh*Gw, C/2)
    emb_row = _sincos_1d(embed_dim // 2, rows.reshape(-1))  # (Gh*Gw, C/2)
    return torch.cat([emb_col, emb_row], dim=1).float()  # (Gh*Gw, C)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / (10000.0**omega)  # (dim/2,)
    out = pos[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, dim)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (B, dim): ``[cos, sin]``.

    Frequencies are ``exp(-ln(max_period) * i / (dim/2))``; an odd ``dim`` gets a zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (dim/2,)
    args = t[:, None].float() * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*(dim/2))
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb
