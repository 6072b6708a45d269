"""Memory layout of the attention output: ``(B, H, N, Dv)`` in ``(B, N, H, Dv)`` storage.

SDPA's flash and cuDNN backends return this layout, so the usual ``out.transpose(1, 2).reshape(B, N,
H * Dv)`` of timm, Hugging Face and diffusers attention is a view, not a copy. Every bitlower forward
(fused kernels, the reference fallback inside the operator, the fake implementations) returns it.
"""
from __future__ import annotations

import torch


def new_output(bsz: int, heads: int, n: int, dim_v: int, *, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(B, H, N, Dv)`` tensor in ``(B, N, H, Dv)`` storage, ``like``'s dtype and device
    (``new_empty``, so fake tensors make fake outputs)."""
    return like.new_empty(bsz, n, heads, dim_v).transpose(1, 2)


def in_output_layout(out: torch.Tensor) -> torch.Tensor:
    """``out`` ``(B, H, N, Dv)`` copied into ``new_output``'s layout (the reference path's outputs)."""
    bsz, heads, n, dim_v = out.shape
    fresh = new_output(bsz, heads, n, dim_v, like=out)
    fresh.copy_(out)
    return fresh
