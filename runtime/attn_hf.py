"""Handlers for Hugging Face ``transformers`` ViT/DeiT/Dinov2 attention (registered by name).

Two layouts exist across transformers releases, under the same module path:

- 4.x ``ViTSelfAttention``: ``query``/``key``/``value`` Linears, ``num_attention_heads``,
  ``attention_head_size``; ``forward(hidden_states, head_mask=None, output_attentions=False)``
  returns ``(context, probs)``; the output projection lives in the sibling ``ViTSelfOutput``,
  and ``ViTAttention`` merely wraps the two.
- 5.x ``ViTAttention``: ``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``num_attention_heads``,
  ``head_dim``, ``scaling``; ``forward(hidden_states, attention_mask=None, **kwargs)`` returns
  ``(output, weights)``.

Binarized modules return ``None`` for the attention weights. The patch grid is read from the
root model's config (``image_size // patch_size``) with one prefix token for ViT and Dinov2 (cls) and
two for DeiT (cls, distillation); a model wrapped in another module is searched for that config.
"""
from __future__ import annotations

import torch
from torch import nn

from .core import Geometry
from .grids import grid_from_hf_config
from .registry import AttentionHandler, register_attention, swap_class


def _heads(module: nn.Module, x: torch.Tensor, linear: nn.Module, head_dim: int) -> torch.Tensor:
    B, N, _ = x.shape
    return linear(x).view(B, N, -1, head_dim).transpose(1, 2)  # (B, H, N, D)


class BinaryHFSelfAttentionMixin:
    """4.x ``ViTSelfAttention`` running the binary core; returns ``(context, None)``."""

    def forward(self, hidden_states: torch.Tensor, head_mask=None, output_attentions: bool = False, **kwargs):
        if head_mask is not None:
            raise ValueError("bitlower: head_mask is not supported by binary attention")
        D = self.attention_head_size
        q, k, v = (_heads(self, hidden_states, lin, D) for lin in (self.query, self.key, self.value))
        out = self.binary(q, k, v, scale=D ** -0.5)  # (B, H, N, D)
        B, N = hidden_states.shape[:2]
        return out.transpose(1, 2).reshape(B, N, -1), None  # (B, N, H*D)


class BinaryHFAttentionMixin:
    """5.x ``ViTAttention`` running the binary core; returns ``(output, None)``."""

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        D = self.head_dim
        q, k, v = (_heads(self, hidden_states, lin, D) for lin in (self.q_proj, self.k_proj, self.v_proj))
        out = self.binary(q, k, v, scale=self.scaling, mask=attention_mask)  # (B, H, N, D)
        B, N = hidden_states.shape[:2]
        return self.o_proj(out.transpose(1, 2).reshape(B, N, -1)), None  # (B, N, C)


def _hf_grid(root: nn.Module, prefix_tokens: int) -> tuple[int, int, int] | None:
    """The grid from the first module (root first) with a Hugging Face vision config: a model
    wrapped in the user's own ``nn.Module`` still states it on the wrapped model."""
    return next((g for g in (grid_from_hf_config(m, prefix_tokens) for m in root.modules()) if g is not None), None)


def _geometry_for(prefix_tokens: int, head_dim_attr: str):
    def geometry(module: nn.Module, root: nn.Module) -> Geometry:
        head_dim = getattr(module, head_dim_attr)
        return Geometry(module.num_attention_heads, head_dim, _hf_grid(root, prefix_tokens))

    return geometry


def _handlers(prefix_tokens: int):
    self_attention = AttentionHandler(
        name="transformers.SelfAttention(query/key/value)",
        geometry=_geometry_for(prefix_tokens, "attention_head_size"),
        install=lambda m: swap_class(m, BinaryHFSelfAttentionMixin),
    )
    attention = AttentionHandler(
        name="transformers.Attention(q_proj/k_proj/v_proj)",
        geometry=_geometry_for(prefix_tokens, "head_dim"),
        install=lambda m: swap_class(m, BinaryHFAttentionMixin),
        applies=lambda m: hasattr(m, "q_proj"),  # 4.x ViTAttention only wraps a ViTSelfAttention
    )
    return self_attention, attention


for _model, _cls, _prefix in (("vit", "ViT", 1), ("deit", "DeiT", 2), ("dinov2", "Dinov2", 1)):
    _self_attention, _attention = _handlers(_prefix)
    _path = f"transformers.models.{_model}.modeling_{_model}"
    register_attention(f"{_path}.{_cls}SelfAttention", _self_attention)
    register_attention(f"{_path}.{_cls}Attention", _attention)
