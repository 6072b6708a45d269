"""``scaled_dot_product_attention``: binary attention behind the signature of
``torch.nn.functional.scaled_dot_product_attention``, so one assignment swaps it in.

    import torch.nn.functional as F, bitlower
    F.scaled_dot_product_attention = bitlower.scaled_dot_product_attention

It computes ``softmax(scale * mean|q| * mean|k| * sgn(q) sgn(k)ᵀ + mask) V`` (SPEC §3, weighting
``mean_abs`` per (batch, head), straight-through gradients) through ``bitlower.binary_attention``,
with SDPA's conventions for every argument:
- ``query (..., L, E)``, ``key (..., S, E)``, ``value (..., S, Ev)``; the leading dimensions
  broadcast (three or more dimensions; the last leading one is the heads);
- ``attn_mask``: bool (True takes part) or float (added to the scores), broadcastable to
  ``(..., L, S)``;
- ``is_causal``: the lower-triangular mask aligned at the top left (query ``i`` sees keys
  ``j <= i``), as SDPA; not together with ``attn_mask``;
- ``scale``: default ``1 / sqrt(E)``;
- ``enable_gqa``: ``key``/``value`` with fewer heads than ``query`` (a divisor) are repeated
  (``repeat_interleave`` over the heads), as SDPA;
- ``dropout_p``: binary attention has no attention dropout, so only 0 is taken (models pass
  ``dropout_p = p if self.training else 0.0``: a non-zero value means training with dropout).
"""
from __future__ import annotations

import math

import torch

from bitlower.functional import binary_attention


def _check(query, key, value, attn_mask, dropout_p, is_causal) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() < 3:
            raise ValueError(f"{name} must have at least 3 dimensions (..., L, E), got shape {tuple(t.shape)}")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p}: binary attention has no attention dropout; pass 0.0 (models do in "
                         "eval mode) or set the model's attention dropout to 0 for training")
    if is_causal and attn_mask is not None:
        raise ValueError("attn_mask must be None when is_causal=True (as in F.scaled_dot_product_attention)")
    if key.shape[-1] != query.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(f"shapes do not fit: query {tuple(query.shape)}, key {tuple(key.shape)}, value "
                         f"{tuple(value.shape)} (need query (..., L, E), key (..., S, E), value (..., S, Ev))")


def _repeat_kv_heads(query, key, value, enable_gqa: bool):
    hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
    if not enable_gqa or hq == hk == hv:
        return key, value
    if hk != hv or hq % hk:
        raise ValueError(f"enable_gqa: query heads ({hq}) must be a multiple of key heads ({hk}) = value heads ({hv})")
    return key.repeat_interleave(hq // hk, dim=-3), value.repeat_interleave(hq // hv, dim=-3)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False) -> torch.Tensor:
    """Binary attention with ``F.scaled_dot_product_attention``'s arguments (module docstring).

    Returns:
        ``(..., L, Ev)`` in value's dtype.

    Raises:
        ValueError: a non-zero ``dropout_p``; ``attn_mask`` with ``is_causal``; shapes that do not
            fit or broadcast; a head count that GQA cannot repeat; what ``binary_attention``
            refuses (head dim outside 8..256, a mask that does not broadcast).
        TypeError: non-tensor inputs, a mask neither bool nor float.

    Example:
        >>> q, k, v = (torch.randn(2, 4, 16, 32) for _ in range(3))
        >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
        torch.Size([2, 4, 16, 32])
    """
    _check(query, key, value, attn_mask, dropout_p, is_causal)
    key, value = _repeat_kv_heads(query, key, value, enable_gqa)
    lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    (L, E), S, Ev = query.shape[-2:], key.shape[-2], value.shape[-1]
    q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (query, key, value))
    folded = (math.prod(lead[:-1]), lead[-1])  # (B, H): every leading dimension but the heads into B
    q, k, v = q.reshape(*folded, L, E), k.reshape(*folded, S, E), v.reshape(*folded, S, Ev)  # (B, H, ., .)
    mask = attn_mask
    if is_causal:
        mask = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()  # (L, S), top-left aligned
    elif mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a tensor or None, got {type(mask).__name__}")
        if mask.dim() > 4 or len(lead) != 2:  # fold its leading dimensions as q's were
            mask = mask.expand(*lead, L, S).reshape(*folded, L, S)  # (B, H, L, S)
    out = binary_attention(q, k, v, bias=mask, scale=scale)  # (B, H, L, Ev)
    return out.reshape(*lead, L, Ev)


def transformers_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
    """Hugging Face ``transformers`` attention function running ``scaled_dot_product_attention``.

    The interface of ``transformers.integrations.sdpa_attention.sdpa_attention_forward``:
    ``(B, H, N, D)`` query, ``(B, Hkv, M, D)`` key/value, an additive or bool mask; returns
    ``((B, N, H, Dv) output, None)``. Causal as transformers decides it: the module's
    ``is_causal`` unless given, only without a mask and for more than one query.
    """
    if kwargs.get("output_attentions"):
        raise ValueError("bitlower attention does not return attention weights (output_attentions=True)")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    causal = bool(causal) and attention_mask is None and query.shape[2] > 1
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[-2]]  # transformers' masks may be longer than the keys (caches)
    groups = getattr(module, "num_key_value_groups", 1)
    out = scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                       scale=scaling, enable_gqa=groups > 1)  # (B, H, N, Dv)
    return out.transpose(1, 2).contiguous(), None  # (B, N, H, Dv)


def register_transformers_attention(name: str = "bitlower") -> str:
    """Register ``transformers_attention`` with transformers' ``AttentionInterface`` under ``name``.

    Then ``Model.from_pretrained(..., attn_implementation="bitlower")`` or
    ``model.set_attn_implementation("bitlower")`` runs every attention of the model as binary
    attention (post-training: ``mean_abs`` weighting, no learned parts; ``bitlower.binarize_``
    adds the learned ones).

    Returns:
        the name registered.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(name, transformers_attention)
    return name
