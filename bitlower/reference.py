"""Exact PyTorch reference of binary attention, forward and backward (SPEC §2-4).

Notation: ``B`` batch, ``H`` heads, ``N`` queries, ``M`` keys, ``D`` head dim of q/k,
``Dv`` head dim of v, ``P`` sign planes (2 for bilinear weighting, else 1),
``W = ceil(D / 32)`` packed words.

    h^{pr}_ij = <sgn q_i^p, sgn k_j^r>              (integer Hamming dot, from packed words)
    S_ij      = scale * sum_{p,r} a_i^p b_j^r h^{pr}_ij + beta_ij
    P         = softmax_j(S),  O = P V              (P^, V^ 8-bit when pv_quant == "int8")

This module is the CPU implementation of the ``bitlower`` operators, the fallback of the
CUDA path, and the oracle of every test. It computes in float32 (float64 for float64
inputs) and saves only packed bits, scalars and the log-sum-exp for the backward, the
same contract the Triton kernels keep.
"""
from __future__ import annotations

import math

import torch

from bitlower.packing import hamming_dot, num_words, pack_mask, pack_signs, sgn, unpack_bits, unpack_signs
from bitlower.relpos import table_to_dense
from bitlower.spec import CallSpec

PROB_LEVELS = 255.0  # P^ = round(255 P) / 255
V_LEVELS = 127.0  # symmetric int8 per channel
V_STE_RANGE = 2.0  # dV is zeroed where |v| > 2 (straight-through window)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def with_planes(x: torch.Tensor, spec: CallSpec) -> torch.Tensor:
    """View q or k as ``(B, H, L, P, D)``."""
    return x if spec.planes > 1 else x.unsqueeze(-2)


def nan_rows(x: torch.Tensor) -> torch.Tensor:
    """1 per token, NaN where the token has a NaN channel: ``(B, H, L, 1)``."""
    bad = torch.isnan(x).flatten(start_dim=3).any(-1, keepdim=True)
    return torch.where(bad, float("nan"), 1.0)


def effective_scalars(x: torch.Tensor, given: torch.Tensor | None, spec: CallSpec) -> torch.Tensor:
    """Per-token weighting scalars ``(B, H, L, P)`` in the compute dtype."""
    acc = compute_dtype(x.dtype)
    bsz, heads, length = x.shape[:3]
    if spec.weighting == "mean_abs":
        mean_abs = x.to(acc).abs().mean(dim=(2, 3), keepdim=True)  # (B, H, 1, 1)
        scalars = mean_abs.expand(bsz, heads, length, 1)
    elif spec.weighting in ("token", "bilinear"):
        scalars = given.to(acc).reshape(bsz, heads, length, spec.planes)
    else:
        scalars = torch.ones(bsz, heads, length, 1, dtype=acc, device=x.device)
    return (scalars * nan_rows(x).to(acc)).contiguous()


def dense_bias(bias: torch.Tensor | None, spec: CallSpec, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive ``beta`` broadcastable to ``(B, H, N, M)``, or None."""
    kind = spec.bias_kind
    if kind == "none":
        return None
    if kind == "head":
        return bias.to(dtype).view(1, -1, 1, 1)  # (1, H, 1, 1)
    if kind == "table":
        return table_to_dense(bias.to(dtype), spec.grid)  # (1, H, N, N)
    if kind == "mask":
        return torch.zeros((), dtype=dtype, device=bias.device).masked_fill(~bias, float("-inf"))
    return bias.to(dtype)


def integer_scores(qbits, kbits, head_dim: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``h`` of shape ``(B, H, N, M, P, P)`` from packed ``(B, H, L, P, W)`` bits, exact in ``dtype``.

    Integer dtypes count bits (popcount of XOR). Floating dtypes multiply the unpacked ``+-1`` signs:
    every product is exactly ``+-1`` and every partial sum an integer of at most ``D`` in magnitude,
    so the matrix product is exact (float32 holds integers to 2**24) and runs as one batched matmul,
    not ``P * P`` popcount passes over a ``(B, H, N, M, W)`` temporary.
    """
    if dtype.is_floating_point:
        qs = unpack_signs(qbits, head_dim, dtype)  # (B, H, N, P, D)
        ks = unpack_signs(kbits, head_dim, dtype)  # (B, H, M, P, D)
        return torch.einsum("bhnpd,bhmrd->bhnmpr", qs, ks)
    planes = qbits.shape[3]
    rows = []
    for p in range(planes):
        cols = [
            hamming_dot(qbits[:, :, :, p], kbits[:, :, :, r], head_dim, out_dtype=dtype)
            for r in range(planes)
        ]
        rows.append(torch.stack(cols, dim=-1))  # (B, H, N, M, P)
    return torch.stack(rows, dim=-2)  # (B, H, N, M, P, P)


def scores(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``S = scale * sum_{p,r} a_i^p b_j^r h^{pr}_ij + beta``: ``(B, H, N, M)``."""
    if h.shape[-1] == 1:
        s = h[..., 0, 0] * (a * scale) * b[..., 0].unsqueeze(-2)  # (B, H, N, M)
    else:
        s = torch.einsum("bhnmpr,bhnp,bhmr->bhnm", h, a * scale, b)
    return s if beta is None else s + beta


def softmax_rows(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, lse)`` of scores ``(B, H, N, M)``: ``P = exp(s - m) / l`` with ``m`` the row maximum.

    Normalising by the sum ``l`` keeps every row a convex combination at any magnitude:
    ``exp(s - lse)`` is not one once ``lse = m + log(l)`` rounds to ``m`` (scores near 1e7 in
    float32 make ``log(l)`` vanish and rows sum to up to ``M``). A row whose every score is -inf
    (no kept key) gets ``P = 0`` and ``lse = -inf``: the backward sees no contribution from it,
    and the forward writes NaN into its output, as a softmax over -inf does.
    """
    probs, lse, _ = softmax_parts(s)
    return probs, lse


def softmax_parts(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, lse, row_state)`` of scores ``(B, H, N, M)``: ``softmax_rows`` and the row state.

    ``row_state`` ``(B, H, N, 2)``: ``m log2 e`` and ``log2 l`` apart (the row maximum and the row sum
    of ``exp(s - m)`` in log2 units), what the fused backward forms ``p = exp2((s2 - m2) - log2 l)``
    from: ``m + log(l)`` rounds to ``m`` at |s| ~ 1e7, the two apart do not. A row without a kept key
    has ``log2 l = -inf``. The kernels' own forward writes the same quantities from its own ``s2``
    (bit-identical to the backward's recomputation); this one agrees with it to float32 rounding of
    ``m log2 e``, which at |s| ~ 1e7 is an ulp of ~1 in the exponent.
    """
    m = s.amax(dim=-1, keepdim=True)  # (B, H, N, 1)
    m = torch.where(torch.isneginf(m), 0.0, m)  # rows without a kept key: exp(-inf - 0) = 0
    e = torch.exp(s - m)
    total = e.sum(dim=-1, keepdim=True)
    probs = e / torch.where(total > 0, total, 1.0)
    state = torch.cat([m * math.log2(math.e), torch.log2(total)], dim=-1)  # (B, H, N, 2)
    return probs, (m + torch.log(total)).squeeze(-1), state  # (B, H, N, M), (B, H, N), (B, H, N, 2)


def quantize_probs(p: torch.Tensor) -> torch.Tensor:
    """``round(255 P) / 255``."""
    return torch.round(p * PROB_LEVELS) / PROB_LEVELS


def quantize_values(v: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per (batch, head, channel): ``s_c = 127 / max_n |v[n, c]|``; 0 stays 0."""
    vmax = v.abs().amax(dim=-2, keepdim=True)  # (B, H, 1, Dv)
    safe = torch.where(vmax > 0, vmax, 1.0)
    return torch.round(v * (V_LEVELS / safe)) * (safe / V_LEVELS)


def forward(q, k, v, a_in, b_in, bias, spec: CallSpec):
    """Reference forward.

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a, b, row_state)``: ``out`` ``(B, H, N, Dv)`` in v's
        dtype; ``lse`` ``(B, H, N)``; packed bits ``(B, H, L, P, W)`` int32 (clip bits have
        ``W = 0`` unless ``grad_mode == "ste"``); scalars ``(B, H, L, P)``; ``row_state``
        ``(B, H, N, 2)`` (``softmax_parts``).
    """
    acc = compute_dtype(q.dtype)
    head_dim = q.shape[-1]
    qp, kp = with_planes(q, spec), with_planes(k, spec)  # (B, H, L, P, D)
    qbits, kbits = pack_signs(qp), pack_signs(kp)
    qclip, kclip = clip_bits(qp, spec), clip_bits(kp, spec)
    a = effective_scalars(q, a_in, spec)
    b = effective_scalars(k, b_in, spec)
    h = integer_scores(qbits, kbits, head_dim, acc)
    s = scores(h, a, b, dense_bias(bias, spec, acc), spec.scale)
    probs, lse, state = softmax_parts(s)
    vv = v.to(acc)
    if spec.pv_quant == "int8":
        probs, vv = quantize_probs(probs), quantize_values(vv)
    out = probs @ vv  # (B, H, N, Dv)
    out = torch.where(torch.isneginf(lse).unsqueeze(-1), float("nan"), out)  # rows without a kept key
    return out.to(v.dtype), lse, qbits, kbits, qclip, kclip, a, b, state


def clip_bits(x: torch.Tensor, spec: CallSpec) -> torch.Tensor:
    """Packed ``|x| <= ste_clip`` for the STE backward; ``W = 0`` words otherwise."""
    if not spec.saves_clip_bits:
        return torch.zeros(*x.shape[:-1], 0, dtype=torch.int32, device=x.device)
    return pack_mask(x.abs() <= spec.ste_clip)
