"""Multi-head self-attention shared by every reference model.

The attention math is a single ``F.scaled_dot_product_attention`` call so that the bitlower
backend finds it in a captured graph, and so that another module can reuse ``project_qkv``
while replacing ``attend``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Self-attention with a fused ``qkv`` projection and an output ``proj``.

    Parameter names (``qkv``, ``proj``) match the published ViT/DeiT/DiT checkpoints. With
    ``value_dim`` smaller than ``dim`` the value path is narrowed (pixel transformer:
    ``value_dim = dim // 4``); ``qkv`` then outputs ``2*dim + value_dim`` features.

    Attributes:
        num_heads: H.
        head_dim: D, head dim of q and k (``dim // num_heads``).
        value_head_dim: Dv, head dim of v (``value_dim // num_heads``).
        scale: softmax scale, ``head_dim ** -0.5``.
        grid_size: patch grid (Gh, Gw) of the tokens after the prefix, or None when the
            tokens are not a grid; set by the owning model.
        num_prefix_tokens: tokens before the grid (1 for a cls token, 2 with a distillation
            token, 0 for DiT); set by the owning model.

    Args:
        dim: token width C.
        num_heads: number of heads; must divide ``dim`` and ``value_dim``.
        qkv_bias: whether ``qkv`` has a bias.
        value_dim: total value width (default ``dim``).

    Raises:
        ValueError: if ``num_heads`` does not divide ``dim`` or ``value_dim``.

    Example:
        >>> attn = Attention(64, num_heads=4)
        >>> attn(torch.zeros(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, value_dim: int | None = None
    ) -> None:
        super().__init__()
        value_dim = dim if value_dim is None else value_dim
        if dim % num_heads or value_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide dim={dim} and value_dim={value_dim}"
            )
        self.dim = dim
        self.value_dim = value_dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.value_head_dim = value_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid_size: tuple[int, int] | None = None
        self.num_prefix_tokens: int = 0
        self.qkv = nn.Linear(dim, 2 * dim + value_dim, bias=qkv_bias)
        self.proj = nn.Linear(value_dim, dim)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project tokens (B, N, C) to q, k of shape (B, H, N, D) and v of shape (B, H, N, Dv)."""
        B, N, _ = x.shape
        qkv = self.qkv(x)  # (B, N, 2C + Cv)
        q, k, v = qkv.split([self.dim, self.dim, self.value_dim], dim=-1)
        q = q.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        k = k.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        v = v.reshape(B, N, self.num_heads, self.value_head_dim).transpose(1, 2)  # (B, H, N, Dv)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention: (B, H, N, D), (B, H, M, D), (B, H, M, Dv) → (B, H, N, Dv)."""
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """Merge heads and project back: (B, H, N, Dv) → (B, N, C)."""
        B, _, N, _ = out.shape
        out = out.transpose(1, 2).reshape(B, N, self.value_dim)  # (B, N, H*Dv)
        return self.proj(out)  # (B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        return self.merge_heads(self.attend(q, k, v))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"value_head_dim={self.value_head_dim}, grid_size={self.grid_size}, "
            f"num_prefix_tokens={self.num_prefix_tokens}"
        )


def set_attention_metadata(
    model: nn.Module, grid_size: tuple[int, int] | None, num_prefix_tokens: int
) -> int:
    """Write ``grid_size`` and ``num_prefix_tokens`` into every ``Attention`` in ``model``.

    Returns:
        the number of attention modules updated.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.grid_size = None if grid_size is None else tuple(grid_size)
            module.num_prefix_tokens = num_prefix_tokens
            count += 1
    return count
