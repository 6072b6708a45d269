"""Vision Transformer (ViT) and DeiT with an optional distillation token.

Parameter names match the published ViT/DeiT checkpoints (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head``, and for DeiT distilled ``dist_token``, ``head_dist``), so those state dicts load
with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import Attention, set_attention_metadata
from .layers import DropPath, Mlp, PatchEmbed, init_linear_trunc_normal


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT/DeiT.

    Args:
        img_size: input height and width (int or pair).
        patch_size: patch height and width; must divide ``img_size``.
        in_chans: input channels.
        num_classes: classifier outputs; 0 means no head (features only).
        embed_dim: token width C.
        depth: number of blocks.
        num_heads: heads per block.
        mlp_ratio: MLP hidden width / C.
        distilled: add a distillation token and ``head_dist`` (DeiT distilled).
        drop_path_rate: stochastic depth at the last block (linear in depth from 0).
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    distilled: bool = False
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide embed_dim={self.embed_dim}"
            )
        if self.depth < 1 or self.num_classes < 0:
            raise ValueError(f"invalid depth/num_classes in {self}")


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    ``value_dim`` narrows the attention's value path (see ``Attention``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, value_dim=value_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # (B, N, C)
        return x + self.drop_path(self.mlp(self.norm2(x)))  # (B, N, C)


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier.

    ``forward`` returns logits (B, num_classes). With a distillation token it returns the mean
    of the two heads, or the pair ``(cls_logits, dist_logits)`` while ``distilled_training``
    is set and the model is in training mode (DeiT hard distillation).

    Args:
        config: a ``ViTConfig``.

    Example:
        >>> cfg = ViTConfig(img_size=32, patch_size=8, num_classes=10, embed_dim=32,
        ...                 depth=2, num_heads=2)
        >>> VisionTransformer(cfg)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.num_prefix_tokens = 2 if config.distilled else 1
        self.distilled_training = False
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.distilled else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = self._make_head()
        self.head_dist = self._make_head() if config.distilled else None
        set_attention_metadata(self, self.grid_size, self.num_prefix_tokens)
        self.reset_parameters()

    def _make_head(self) -> nn.Module:
        if self.config.num_classes == 0:
            return nn.Identity()
        return nn.Linear(self.config.embed_dim, self.config.num_classes)

    def reset_parameters(self) -> None:
        """DeiT initialisation: tokens and position table trunc-normal std 0.02, Linears too."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.apply(init_linear_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, H, W) → normalised tokens (B, P + Gh*Gw, C), prefix tokens first."""
        x = self.patch_embed(x)  # (B, Gh*Gw, C)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]  # (B, 1, C)
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))  # (B, 1, C)
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed  # (B, P + Gh*Gw, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, tokens: torch.Tensor):
        """Tokens (B, N, C) → logits (B, K), or the (cls, dist) pair; see the class docstring."""
        logits = self.head(tokens[:, 0])  # (B, K)
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(tokens[:, 1])  # (B, K)
        if self.distilled_training and self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


_VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def vit_config(size: str, **overrides) -> ViTConfig:
    """Published ViT/DeiT shape by size name (``tiny``, ``small``, ``base``, ``large``).

    Args:
        size: size name.
        **overrides: any ``ViTConfig`` field (``patch_size``, ``img_size``, ``num_classes``, …).

    Raises:
        KeyError: for an unknown size.
    """
    if size not in _VIT_SIZES:
        raise KeyError(f"unknown ViT size {size!r}; known: {sorted(_VIT_SIZES)}")
    return replace(ViTConfig(**_VIT_SIZES[size]), **overrides)


def vit_tiny(**overrides) -> VisionTransformer:
    """ViT-T (C 192, 12 blocks, 3 heads); default patch 16, 224px, 1000 classes."""
    return VisionTransformer(vit_config("tiny", **overrides))


def vit_small(**overrides) -> VisionTransformer:
    """ViT-S (C 384, 12 blocks, 6 heads); default patch 16, 224px, 1000 classes."""
    return VisionTransformer(vit_config("small", **overrides))


def vit_base(**overrides) -> VisionTransformer:
    """ViT-B (C 768, 12 blocks, 12 heads); default patch 16, 224px, 1000 classes."""
    return VisionTransformer(vit_config("base", **overrides))


def vit_large(**overrides) -> VisionTransformer:
    """ViT-L (C 1024, 24 blocks, 16 heads); default patch 16, 224px, 1000 classes."""
    return VisionTransformer(vit_config("large", **overrides))


def deit_tiny_distilled(**overrides) -> VisionTransformer:
    """DeiT-T with a distillation token and ``head_dist``."""
    return VisionTransformer(vit_config("tiny", distilled=True, **overrides))


def deit_small_distilled(**overrides) -> VisionTransformer:
    """DeiT-S with a distillation token and ``head_dist``."""
    return VisionTransformer(vit_config("small", distilled=True, **overrides))


def deit_base_distilled(**overrides) -> VisionTransformer:
    """DeiT-B with a distillation token and ``head_dist``."""
    return VisionTransformer(vit_config("base", distilled=True, **overrides))

