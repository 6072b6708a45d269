"""Handler for timm's ViT ``Attention`` (registered by name: timm is not imported here).

timm's module: ``qkv`` (fused Linear), ``q_norm``/``k_norm`` (per-head, Identity unless
``qk_norm``), ``attn_drop``, optional ``norm`` (``scale_norm``), ``proj``, ``proj_drop``,
``num_heads``, ``head_dim``, ``scale``; ``forward(x, attn_mask=None, is_causal=False)``.
The patch grid comes from the root model (``patch_embed.grid_size``, ``num_prefix_tokens``).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .core import Geometry
from .grids import first_grid, grid_from_attributes, grid_from_patch_embed
from .registry import AttentionHandler, register_attention, swap_class

log = logging.getLogger(__name__)

TIMM_ATTENTION_TYPES = (
    "timm.models.vision_transformer.Attention",  # timm < 1.0.15 defines it here
    "timm.layers.attention.Attention",
)


class BinaryTimmAttentionMixin:
    """timm ``Attention`` whose softmax(q kᵀ) v runs the binary core; projections unchanged."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        B, N, _ = x.shape
        attn_dim = self.num_heads * self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        q, k = self.q_norm(q), self.k_norm(k)
        if is_causal:
            attn_mask = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()  # True = attend
        out = self.binary(q, k, v, scale=self.scale, mask=attn_mask)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(B, N, attn_dim)  # (B, N, H*D)
        norm = getattr(self, "norm", None)
        if norm is not None:
            out = norm(out)
        return self.proj_drop(self.proj(out))  # (B, N, C)


def _install(module: nn.Module) -> None:
    if getattr(module.attn_drop, "p", 0.0) > 0:
        log.warning("bitlower: attention dropout %.3g of timm Attention is not applied by binary attention",
                    module.attn_drop.p)
    swap_class(module, BinaryTimmAttentionMixin)


def _geometry(module: nn.Module, root: nn.Module) -> Geometry:
    grid = first_grid(grid_from_attributes(module), grid_from_patch_embed(root))
    return Geometry(module.num_heads, module.head_dim, grid)


TIMM_ATTENTION = AttentionHandler(name="timm.Attention", geometry=_geometry, install=_install)

for _name in TIMM_ATTENTION_TYPES:
    register_attention(_name, TIMM_ATTENTION)
