"""Handlers for bitlower's own ``models.Attention`` and PyTorch's ``nn.MultiheadAttention``."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .core import Geometry
from .grids import first_grid, grid_from_attributes, grid_from_patch_embed
from .registry import AttentionHandler, register_attention, swap_class

log = logging.getLogger(__name__)


class BinaryModelAttentionMixin:
    """``bitlower.models.Attention`` whose ``attend`` runs the binary core (projections unchanged)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.binary(q, k, v, scale=self.scale)  # (B, H, N, Dv)


def _model_geometry(module: nn.Module, root: nn.Module) -> Geometry:
    return Geometry(module.num_heads, module.head_dim, grid_from_attributes(module))


MODEL_ATTENTION = AttentionHandler(
    name="bitlower.models.Attention",
    geometry=_model_geometry,
    install=lambda module: swap_class(module, BinaryModelAttentionMixin),
)


def _mha_project(mha: nn.MultiheadAttention, query, key, value):
    """Batch-first (B, L, E) inputs -> q (B, H, L, D), k and v (B, H, S, D)."""
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
    heads, head_dim = mha.num_heads, mha.head_dim
    out = []
    for x, w, b in zip((query, key, value), weights, biases):
        y = F.linear(x, w, b)  # (B, L, E)
        out.append(y.view(y.shape[0], y.shape[1], heads, head_dim).transpose(1, 2))  # (B, H, L, D)
    return out


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool keep-mask (True = attend) -> float additive (0 or -inf); float masks pass through."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def mha_mask(attn_mask, key_padding_mask, is_causal: bool, q: torch.Tensor, num_keys: int):
    """``nn.MultiheadAttention``'s masks as one operator bias broadcastable to (B, H, L, S).

    MultiheadAttention's bool masks mark positions to *ignore* (True); the operator's bool mask
    marks positions to *keep*, so bools are inverted. Float masks are additive in both.
    """
    bsz, heads, length = q.shape[0], q.shape[1], q.shape[2]
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(length, num_keys, dtype=torch.bool, device=q.device).triu(1)  # True = ignore
    parts = []
    if attn_mask is not None:
        shape = (1, 1, length, num_keys) if attn_mask.dim() == 2 else (bsz, heads, length, num_keys)
        parts.append(~attn_mask.view(shape) if attn_mask.dtype == torch.bool else attn_mask.view(shape))
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(bsz, 1, 1, num_keys)
        parts.append(~kpm if kpm.dtype == torch.bool else kpm)
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        return parts[0] if len(parts) == 1 else parts[0] & parts[1]
    return sum(_as_additive(p, q.dtype) for p in parts)


class BinaryMultiheadAttentionMixin:
    """``nn.MultiheadAttention`` running the binary core; attention weights are not returned."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E)
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q, k, v = _mha_project(self, query, key, value)
        mask = mha_mask(attn_mask, key_padding_mask, is_causal, q, k.shape[2])
        out = self.binary(q, k, v, scale=self.head_dim ** -0.5, mask=mask)  # (B, H, L, D)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.embed_dim)  # (B, L, E)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)  # (L, B, E)
        return out, None


def _keep_python_path(module, args):
    """No-op pre-hook: ``nn.TransformerEncoderLayer`` skips its fused C++ fast path (which reads
    ``in_proj_weight`` directly and would bypass the binary forward) when a submodule has hooks."""
    return None


def _install_mha(module: nn.MultiheadAttention) -> None:
    if module.dropout > 0:
        log.warning("bitlower: attention dropout %.3g of %s is not applied by binary attention",
                    module.dropout, type(module).__name__)
    swap_class(module, BinaryMultiheadAttentionMixin)
    module.register_forward_pre_hook(_keep_python_path)


def _mha_unsupported(module: nn.MultiheadAttention) -> str | None:
    if module.bias_k is not None or module.bias_v is not None:
        return "bias_k/bias_v (learned extra key and value) are not supported"
    if module.add_zero_attn:
        return "add_zero_attn is not supported"
    return None


def _mha_geometry(module: nn.Module, root: nn.Module) -> Geometry:
    grid = first_grid(grid_from_attributes(module), grid_from_patch_embed(root))
    return Geometry(module.num_heads, module.head_dim, grid)


MULTIHEAD_ATTENTION = AttentionHandler(
    name="torch.nn.MultiheadAttention",
    geometry=_mha_geometry,
    install=_install_mha,
    unsupported=_mha_unsupported,
)

register_attention("bitlower.models.attention.Attention", MODEL_ATTENTION)
register_attention(nn.MultiheadAttention, MULTIHEAD_ATTENTION)
