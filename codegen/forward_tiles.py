"""The key-tile loop of the tl.dot forward kernel (``forward_kernel``): scores, softmax, P.V.

Parallelisation (``forward_kernel``): a program holds ``BLOCK_N`` query rows of one batch*head and
walks every key tile of ``BLOCK_M`` columns in order, alone; scores are in log2 units,

    h_ij  = int8 dot of +-1 signs (int32, exact)           -> float32 by the magic-number add
    s2_ij = h_ij * c + beta2_ij                              (mean_abs: c one scalar per (b, h))
    s2_ij = h_ij * c_i * b_j + beta2_ij                      (token / none: c_i = scale a_i log2 e)
    p_ij  = exp2(s2_ij - m_i),  l_i += sum_j p_ij,  acc_i += p_ij V_j

Q and K signs are int8 ``+-1`` tensors written by the stats pass (``stats.py``): a loaded
operand stays in shared memory for the tensor-core dot (K from packed bits per tile: 5-9x slower,
benchmarks/kernel_notes.md attempt 1).

Row maximum ``m_i``: binary scores are bounded, ``|s2_ij| <= |c_i| max|b| D + max|beta2|``, so the
kernel uses that bound (no running max, no rescaling) where it is tight enough (``2 * bound <=
LIMIT``; else ``exp2(s2 - m)`` could underflow the P.V operand) and the running maximum otherwise
(``attend_rows``). A call without any bound (a caller's dense float bias) compiles the online form alone.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .tiles import (BIAS_DENSE, BIAS_HEAD, BIAS_MASK, BIAS_TABLE, DOT_FP16, DOT_FP32, LN2, LOG2E, add_dense_bias,
                    bias_tile, fdot, int_to_float, load_signs, mask_keep, round_half_even)

# running-max start: finite, so fully masked tiles give p = exp2(-inf - m) = 0, no NaN; the lowest
# finite float32, so a row whose every score is a finite fill at -FLT_MAX (``add_dense_bias``) takes
# m = -FLT_MAX and p = exp2(0) = 1 on every key: the uniform average the reference gives
NEG_INIT = tl.constexpr(-3.4028234663852886e38)  # -FLT_MAX
STAGE_FUSED = tl.constexpr(0)  # softmax + P.V
STAGE_SUM = tl.constexpr(1)  # (m, l) only: the first pass of the 8-bit P.V
STAGE_PV_INT8 = tl.constexpr(2)  # quantised P.V with the final 1 / l


@triton.jit
def score_tile(
    qs, ks, c, c_rows, cols, col_mask, rows, row_mask, b_base, bias_base, s_bn, s_bm, grid_h, grid_w, prefix,
    MEAN_ABS: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, MASK_M: tl.constexpr,
):
    """Scores ``s2`` ``(BLOCK_N, BLOCK_M)`` in log2 units; -inf on masked pairs and past ``M``."""
    hf = int_to_float(tl.dot(qs, tl.trans(ks), out_dtype=tl.int32))
    if MEAN_ABS:
        s = hf * c
    else:
        bj = tl.load(b_base + cols, mask=col_mask, other=0.0)
        s = hf * (c_rows[:, None] * bj[None, :])  # the backward's expression (``_probs``), bit for bit
    if BIAS == BIAS_TABLE:
        s += bias_tile(
            bias_base, rows, cols, row_mask, col_mask, s_bn, s_bm, grid_h, grid_w, prefix, BIAS=BIAS,
            HAS_PREFIX=HAS_PREFIX, LOG2_UNITS=False)  # the launcher's table is in log2 units
    if BIAS == BIAS_DENSE:
        s = add_dense_bias(s, bias_tile(
            bias_base, rows, cols, row_mask, col_mask, s_bn, s_bm, grid_h, grid_w, prefix, BIAS=BIAS,
            HAS_PREFIX=HAS_PREFIX, LOG2_UNITS=False))
    if BIAS == BIAS_MASK:
        s = tl.where(mask_keep(bias_base, rows, cols, row_mask, col_mask, s_bn, s_bm), s, float("-inf"))
    if MASK_M:
        s = tl.where(col_mask[None, :], s, float("-inf"))
    return s


@triton.jit
def fwd_tiles(
    acc, l_i, m_i, inv_l, qs, c, c_rows, rows, row_mask, lo, hi,
    k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, BLOCK_M: tl.constexpr,
    MEAN_ABS: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    DOT: tl.constexpr, ONLINE: tl.constexpr, MASK_M: tl.constexpr, STAGE: tl.constexpr,
):
    """Key tiles ``[lo, hi)`` at the stage ``STAGE`` (module constants ``STAGE_*``)."""
    dv = tl.arange(0, DVP)
    dv_mask = dv < DV
    for start in range(lo, hi, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        col_mask = cols < M
        ks = load_signs(k_base, cols, col_mask, s_km, DP)  # (BLOCK_M, DP) int8
        s = score_tile(
            qs, ks, c, c_rows, cols, col_mask, rows, row_mask, b_base, bias_base, s_bn, s_bm, grid_h, grid_w, prefix,
            MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, MASK_M=MASK_M)
        if ONLINE and STAGE != STAGE_PV_INT8:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha
            if STAGE == STAGE_FUSED:
                acc = acc * alpha[:, None]
            m_i = m_new
        p = tl.exp2(s - m_i[:, None])
        if STAGE != STAGE_PV_INT8:
            l_i += tl.sum(p, axis=1)
        if STAGE != STAGE_SUM:
            v = tl.load(v_base + cols[:, None] * s_vm + dv[None, :] * s_vd,
                        mask=col_mask[:, None] & dv_mask[None, :], other=0.0)
            if STAGE == STAGE_PV_INT8:
                pq = round_half_even(p * inv_l[:, None] * 255.0)  # integer P^ * 255 in [0, 255]
                vq = round_half_even(v.to(tl.float32) * vscale[None, :])  # integer V^ in [-127, 127]
                acc = fdot(pq, vq, acc, DOT_FP32 if DOT == DOT_FP32 else DOT_FP16)  # small integers: exact in fp16
            else:
                acc = fdot(p, v, acc, DOT)
    return acc, l_i, m_i


@triton.jit
def fwd_rows(
    m_i, qs, c, c_rows, rows, row_mask,
    k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix,
    BLOCK_N: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    DOT: tl.constexpr, ONLINE: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
):
    """All key tiles from ``m_i``: the unmasked full tiles, then the ragged last tile.

    Stage ``FIRST`` over every tile; ``LAST == STAGE_PV_INT8`` adds a second walk for the 8-bit P.V,
    which needs the final ``1 / l``.
    """
    acc = tl.zeros([BLOCK_N, DVP], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    inv_l = l_i
    m_full = (M // BLOCK_M) * BLOCK_M
    acc, l_i, m_i = fwd_tiles(
        acc, l_i, m_i, inv_l, qs, c, c_rows, rows, row_mask, 0, m_full, k_base, s_km, s_kd, v_base, s_vm, s_vd,
        b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M,
        MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, ONLINE=ONLINE, MASK_M=False, STAGE=FIRST)
    acc, l_i, m_i = fwd_tiles(
        acc, l_i, m_i, inv_l, qs, c, c_rows, rows, row_mask, m_full, M, k_base, s_km, s_kd, v_base, s_vm, s_vd,
        b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M,
        MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, ONLINE=ONLINE, MASK_M=True, STAGE=FIRST)
    if LAST == STAGE_PV_INT8:
        inv_l = 1.0 / l_i
        acc, l_i, m_i = fwd_tiles(
            acc, l_i, m_i, inv_l, qs, c, c_rows, rows, row_mask, 0, M, k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base,
            bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M,
            MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, ONLINE=ONLINE, MASK_M=True,
            STAGE=STAGE_PV_INT8)
    return acc, l_i, m_i


@triton.jit
def attend_rows(
    bound, qs, c, c_rows, rows, row_mask,
    k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix,
    BLOCK_N: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    DOT: tl.constexpr, STATIC_MAX: tl.constexpr, LIMIT: tl.constexpr,
    P_OFFSET: tl.constexpr, PV_INT8: tl.constexpr,
):
    """``(acc, l, m)`` of the program's rows: the static maximum where the bound allows, else online."""
    first: tl.constexpr = STAGE_SUM if PV_INT8 else STAGE_FUSED
    last: tl.constexpr = STAGE_PV_INT8 if PV_INT8 else STAGE_FUSED
    online_m = tl.zeros([BLOCK_N], dtype=tl.float32) + NEG_INIT
    if STATIC_MAX:
        if tl.max(bound, axis=0) * 2.0 <= LIMIT:
            acc, l_i, m_i = fwd_rows(
                bound - P_OFFSET, qs, c, c_rows, rows, row_mask, k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base,
                bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N=BLOCK_N, D=D, DP=DP, DV=DV, DVP=DVP,
                BLOCK_M=BLOCK_M, MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, ONLINE=False,
                FIRST=first, LAST=last)
        else:
            acc, l_i, m_i = fwd_rows(
                online_m, qs, c, c_rows, rows, row_mask, k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base, bias_base,
                s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N=BLOCK_N, D=D, DP=DP, DV=DV, DVP=DVP,
                BLOCK_M=BLOCK_M, MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, ONLINE=True,
                FIRST=first, LAST=last)
    else:
        acc, l_i, m_i = fwd_rows(
            online_m, qs, c, c_rows, rows, row_mask, k_base, s_km, s_kd, v_base, s_vm, s_vd, b_base, bias_base, s_bn,
            s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N=BLOCK_N, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M,
            MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, ONLINE=True, FIRST=first, LAST=last)
    return acc, l_i, m_i


@triton.jit
def bias_rows(bias_ptr, b64, h64, table_rows, s_bias_b, s_bias_h, BIAS: tl.constexpr):
    """``(bias_base, row_shift)``: the bias pointer of head ``h64`` of batch ``b64`` the loop reads.

    ``row_shift``: a per-head bias in log2 units; it shifts every score of the row, so only the lse
    takes it.
    """
    row_shift = 0.0
    bias_base = bias_ptr
    if BIAS == BIAS_HEAD:
        row_shift = tl.load(bias_ptr + h64) * LOG2E
    if BIAS == BIAS_TABLE:
        bias_base = bias_ptr + h64 * table_rows
    if BIAS == BIAS_DENSE or BIAS == BIAS_MASK:
        bias_base = bias_ptr + b64 * s_bias_b + h64 * s_bias_h
    return bias_base, row_shift


@triton.jit
def store_rows(out_base, s_on, lse_ptr, state_ptr, acc, l_i, m_i, row_shift, rows, out_rows, row_mask, scale_out,
               DV: tl.constexpr, DVP: tl.constexpr, PV_INT8: tl.constexpr):
    """out = acc / l (or acc * step for the 8-bit P.V) at ``out_base + rows * s_on`` (the program's
    (batch, head), rows ``rows``; channels contiguous), the natural-log lse of the rows, and the row
    state ``(B, H, N, 2)``: ``m + row_shift`` and ``log2(l)`` apart, so the backward's
    ``exp2((s2 - m) - log2 l)`` keeps ``log2 l`` where ``m + log2 l`` rounds to ``m`` (|s2| ~ 1e7)."""
    dv = tl.arange(0, DVP)
    if PV_INT8:
        out = acc * scale_out[None, :]
    else:
        out = acc / l_i[:, None]
    tl.store(out_base + rows[:, None].to(tl.int64) * s_on + dv[None, :], out.to(out_base.dtype.element_ty),
             mask=row_mask[:, None] & (dv < DV)[None, :])
    lse = (m_i + tl.log2(l_i) + row_shift) * LN2  # back to natural log
    tl.store(lse_ptr + out_rows, lse, mask=row_mask)
    tl.store(state_ptr + 2 * out_rows, m_i + row_shift, mask=row_mask)
    tl.store(state_ptr + 2 * out_rows + 1, tl.log2(l_i), mask=row_mask)
