"""Handler for diffusers' ``Attention`` (registered by name: diffusers is not imported here).

diffusers routes an ``Attention``'s math through a processor object; the handler installs
``BinaryAttnProcessor`` with ``set_processor``, the library's own extension point. It follows
the default processor (``AttnProcessor2_0``): optional spatial and group norm, ``to_q``/``to_k``/
``to_v``, optional ``norm_q``/``norm_k``, ``to_out[0]`` (Linear) and ``to_out[1]`` (dropout),
residual and ``rescale_output_factor``. Like that processor, the softmax scale is
``head_dim ** -0.5``. Instances with other processors (added key/value projections, IP adapters,
LoRA processors) are reported as unsupported.
"""
from __future__ import annotations

import torch
from torch import nn

from .core import Geometry
from .grids import first_grid, grid_from_attributes
from .registry import AttentionHandler, register_attention

DIFFUSERS_ATTENTION_TYPES = ("diffusers.models.attention_processor.Attention",)
DEFAULT_PROCESSORS = ("AttnProcessor", "AttnProcessor2_0", "BinaryAttnProcessor")


class BinaryAttnProcessor:
    """diffusers attention processor that runs the module's ``binary`` core."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:  # (B, C, H, W) -> (B, H*W, C)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        B, S = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, S, B)
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])  # (B, H, N|1, S)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)  # (B, L, H*D)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (x.view(B, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))  # (B, H, L, D)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = attn.binary(q, k, v, scale=head_dim ** -0.5, mask=attention_mask)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(B, -1, attn.heads * head_dim).to(q.dtype)  # (B, N, H*D)
        out = attn.to_out[1](attn.to_out[0](out))
        if image_shape is not None:  # (B, H*W, C) -> (B, C, H, W)
            out = out.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _unsupported(module: nn.Module) -> str | None:
    processor = type(getattr(module, "processor", None)).__name__
    if processor not in DEFAULT_PROCESSORS:
        return f"processor {processor} is not a default processor"
    if getattr(module, "add_k_proj", None) is not None:
        return "added key/value projections (joint attention) are not supported"
    if getattr(module, "inner_kv_dim", module.inner_dim) != module.inner_dim:
        return "grouped key/value heads are not supported"
    return None


def _patch_grid(root: nn.Module) -> tuple[int, int, int] | None:
    """diffusers ``PatchEmbed`` (``root.pos_embed``) stores the grid as ``height``/``width``."""
    embed = getattr(root, "pos_embed", None)
    height, width = getattr(embed, "height", None), getattr(embed, "width", None)
    if not isinstance(height, int) or not isinstance(width, int):
        return None
    return (height, width, 0)


def _geometry(module: nn.Module, root: nn.Module) -> Geometry:
    grid = None if module.is_cross_attention else first_grid(grid_from_attributes(module), _patch_grid(root))
    return Geometry(module.heads, module.inner_dim // module.heads, grid)


DIFFUSERS_ATTENTION = AttentionHandler(
    name="diffusers.Attention",
    geometry=_geometry,
    install=lambda module: module.set_processor(BinaryAttnProcessor()),
    unsupported=_unsupported,
)

for _name in DIFFUSERS_ATTENTION_TYPES:
    register_attention(_name, DIFFUSERS_ATTENTION)
