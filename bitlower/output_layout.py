"""Memory layout of the attention output and of the gradients dq, dk, dv: ``(B, H, L, D)`` in ``(B, L, H, D)``
storage, in v's dtype.

SDPA's flash and cuDNN backends return this layout, so the usual ``out.transpose(1, 2).reshape(B, N,
H * Dv)`` of timm, Hugging Face and diffusers attention is a view, not a copy. Every bitlower forward
(fused kernels, the reference fallback inside the operator, the fake implementations) returns it. The
backward returns dq, dk and dv in it too: the models' q, k, v are views of one ``(B, L, 3, H, D)`` projection,
whose gradient is then a concatenation of rows of D contiguous elements, not a transposing copy (on the H200 the
transposing copy of float32 dq, dk took 166 us per DiT-B/2 layer against Inductor's 34 for SDPA's gradients).
"""
from __future__ import annotations

import torch


def new_output(bsz: int, heads: int, n: int, dim_v: int, *, like: torch.Tensor,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised ``(B, H, N, Dv)`` tensor in ``(B, N, H, Dv)`` storage, ``like``'s device and dtype (or
    ``dtype``) (``new_empty``, so fake tensors make fake outputs)."""
    return like.new_empty(bsz, n, heads, dim_v, dtype=dtype or like.dtype).transpose(1, 2)


def in_output_layout(out: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``out`` ``(B, H, N, Dv)`` in ``new_output``'s layout and ``dtype`` (default its own): ``out`` itself where
    it is already, else a copy (the reference path's outputs)."""
    bsz, heads, n, dim_v = out.shape
    dtype = dtype or out.dtype
    if out.dtype == dtype and out.stride() == (n * heads * dim_v, dim_v, heads * dim_v, 1):
        return out
    fresh = new_output(bsz, heads, n, dim_v, like=out, dtype=dtype)
    fresh.copy_(out)
    return fresh
