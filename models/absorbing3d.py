"""Absorbing-diffusion transformer over a 3D grid of multi-head VQ codes (BinaryFormer §3.2, A.2).

Input: codes (B, N, G) with N = Ld * Lh * Lw tokens in row-major order over the latent grid and
G sub-codes per token (the seed: 10 x 14 x 12 = 1680 tokens, G = 8 codes of K = 64 entries); value
K is the absorbing (mask) state. A token is embedded as the sum of its G sub-code embeddings (one
table per sub-codebook, K + 1 rows each) plus a learned position embedding over the whole 3D grid
(one row per grid cell). Pre-norm blocks of softmax self-attention (``models.Attention``, one
``F.scaled_dot_product_attention`` call, so ``binarize_`` and the bitlower backend rewrite it) and a
GELU MLP; a final LayerNorm and a linear head give G x K logits per token: the parallel prediction of
all G sub-codes (Bond-Taylor et al. 2022's absorbing diffusion, without time conditioning).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Attention, set_attention_metadata
from .layers import Mlp, init_linear_trunc_normal


@dataclass(frozen=True)
class AbsorbingConfig:
    """Shape of the absorbing-diffusion transformer.

    Args:
        latent_grid: (Ld, Lh, Lw) of the VQ latent grid.
        codebook_heads: G, sub-codes per token.
        codebook_size: K, entries per sub-codebook (code K is the mask).
        width: token width C.
        depth: blocks.
        num_heads: attention heads (head dim C / heads).
        mlp_ratio: MLP hidden width / C.

    Raises:
        ValueError: a non-positive grid side, or ``num_heads`` not dividing ``width``.
    """

    latent_grid: tuple[int, int, int] = (10, 14, 12)
    codebook_heads: int = 8
    codebook_size: int = 64
    width: int = 384
    depth: int = 8
    num_heads: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self):
        grid = tuple(int(g) for g in self.latent_grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"latent_grid must be three positive ints, got {self.latent_grid}")
        object.__setattr__(self, "latent_grid", grid)
        if self.width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide width={self.width}")
        if self.codebook_heads < 1 or self.codebook_size < 2 or self.depth < 1:
            raise ValueError("codebook_heads and depth must be >= 1 and codebook_size >= 2")

    @property
    def num_tokens(self) -> int:
        return self.latent_grid[0] * self.latent_grid[1] * self.latent_grid[2]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # (B, N, C)


class AbsorbingTransformer3D(nn.Module):
    """Codes (B, N, G) with mask value K -> logits (B, N, G, K); see the module docstring.

    Example:
        >>> cfg = AbsorbingConfig(latent_grid=(2, 3, 2), codebook_heads=2, codebook_size=4, width=32, depth=1,
        ...                       num_heads=2)
        >>> model = AbsorbingTransformer3D(cfg)
        >>> model(torch.full((5, 12, 2), 4)).shape
        torch.Size([5, 12, 2, 4])
    """

    def __init__(self, config: AbsorbingConfig):
        super().__init__()
        self.config = config
        g, k, c = config.codebook_heads, config.codebook_size, config.width
        self.mask_id = k
        self.tok_embed = nn.Embedding(g * (k + 1), c)  # G tables of K + 1 rows, stacked
        self.register_buffer("code_offset", torch.arange(g) * (k + 1), persistent=False)  # (G,)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, c))
        self.blocks = nn.ModuleList(Block(c, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.head = nn.Linear(c, g * k)
        set_attention_metadata(self, None, num_prefix_tokens=0)  # a 3D grid: no 2D patch grid to state
        self.apply(init_linear_trunc_normal)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.tok_embed.weight, std=0.02)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if codes.dim() != 3 or codes.shape[1:] != (cfg.num_tokens, cfg.codebook_heads):
            raise ValueError(f"expected codes (B, {cfg.num_tokens}, {cfg.codebook_heads}), got {tuple(codes.shape)}")
        x = self.tok_embed(codes + self.code_offset).sum(2) + self.pos_embed  # (B, N, G, C) -> (B, N, C)
        for block in self.blocks:
            x = block(x)  # (B, N, C)
        logits = self.head(self.norm(x))  # (B, N, G*K)
        return logits.view(*codes.shape, cfg.codebook_size)  # (B, N, G, K)


def absorbing3d(**overrides) -> AbsorbingTransformer3D:
    """The seed's transformer (10 x 14 x 12 grid, 8 blocks, width 384); overrides go to the config."""
    return AbsorbingTransformer3D(AbsorbingConfig(**overrides))
