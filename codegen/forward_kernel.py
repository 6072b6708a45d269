"""The fused binary-attention forward kernel (one source, specialised by constexpr flags).

Notation: program ``(pid_n, bh)`` owns query rows ``i in [pid_n*BLOCK_N, +BLOCK_N)`` of batch*head
``bh`` and walks key tiles ``j`` of ``BLOCK_M``. Per tile:

    h_ij  = int8 dot of +-1 signs (int32, exact)           -> float32 by the magic-number add
    s2_ij = h_ij * c_i * b_j + beta2_ij                     (log2 units; c_i = scale * a_i * log2 e)
    p_ij  = exp2(s2_ij - m_i),  l_i += sum_j p_ij,  acc_i += p_ij V_j

Row maximum ``m_i``: binary scores are bounded, ``|s2_ij| <= |c_i| * max|b| * D + max|beta2|``, so
the kernel first tries that static bound (no running max, no rescaling). A guard falls back to
the online (running max) form for the whole program when ``2 * bound > LIMIT`` (then
``exp2(s2 - m)`` could underflow the operand type of the P.V dot). ``pv_quant == "int8"`` needs
the normalised P before rounding it to 1/255 steps: a stats pass (m, l) then a P.V pass.

Parallelised over (query block, batch*head); no inter-program communication except the
``mean_abs`` scalars, reduced by the prologue before launch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .tiles import abs_max, bias_tile, fdot, int_to_float, load_signs, mask_keep, round_half_even

NEG_INIT = tl.constexpr(-1.0e30)  # running-max start: finite, so fully masked tiles give no NaN


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, inv_l, qs, c_rows, rows, row_mask, lo, hi,
    ks_base, s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, BLOCK_M: tl.constexpr,
    MEAN_ABS: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, K_FROM_BITS: tl.constexpr,
    DOT: tl.constexpr, ONLINE: tl.constexpr, MASK_M: tl.constexpr, STAGE: tl.constexpr,
):
    """Key tiles ``[lo, hi)``. STAGE 0: fused softmax + P.V; 1: (m, l) only; 2: quantised P.V."""
    dv = tl.arange(0, DVP)
    dv_mask = dv < DV
    for start in range(lo, hi, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        col_mask = cols < M
        ks = load_signs(ks_base, cols, col_mask, s_ks_m, D, DP, K_FROM_BITS)  # (BLOCK_M, DP)
        hf = int_to_float(tl.dot(qs, tl.trans(ks), out_dtype=tl.int32))  # (BLOCK_N, BLOCK_M)
        if MEAN_ABS:
            s = hf * c_rows[:, None]
        else:
            bj = tl.load(b_base + cols, mask=col_mask, other=0.0)
            s = (hf * bj[None, :]) * c_rows[:, None]
        if BIAS == 2 or BIAS == 3:
            s += bias_tile(bias_base, rows, cols, row_mask, col_mask, s_bn, s_bm, grid_h, grid_w, prefix,
                           BIAS, HAS_PREFIX, True)
        if BIAS == 4:
            s = tl.where(mask_keep(bias_base, rows, cols, row_mask, col_mask, s_bn, s_bm), s, float("-inf"))
        if MASK_M:
            s = tl.where(col_mask[None, :], s, float("-inf"))
        if ONLINE and STAGE != 2:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha
            if STAGE == 0:
                acc = acc * alpha[:, None]
            m_i = m_new
        p = tl.exp2(s - m_i[:, None])
        if STAGE != 2:
            l_i += tl.sum(p, axis=1)
        if STAGE != 1:
            v = tl.load(v_base + cols[:, None] * s_vm + dv[None, :] * s_vd,
                        mask=col_mask[:, None] & dv_mask[None, :], other=0.0)
            if STAGE == 2:
                pq = round_half_even(p * inv_l[:, None] * 255.0)  # integer P^ * 255 in [0, 255]
                vq = round_half_even(v.to(tl.float32) * vscale[None, :])  # integer V^ in [-127, 127]
                acc = fdot(pq, vq, acc, 0 if DOT == 0 else 1)  # small integers: exact in float16
            else:
                acc = fdot(p, v, acc, DOT)
    return acc, l_i, m_i


@triton.jit
def _fwd_rows(
    m_i, qs, c_rows, rows, row_mask,
    ks_base, s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix,
    BLOCK_N: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    K_FROM_BITS: tl.constexpr, DOT: tl.constexpr, ONLINE: tl.constexpr, PV_INT8: tl.constexpr,
):
    """All key tiles: unmasked full tiles, then the ragged last tile; two stages for PV_INT8."""
    acc = tl.zeros([BLOCK_N, DVP], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    inv_l = l_i
    m_full = (M // BLOCK_M) * BLOCK_M
    first: tl.constexpr = 1 if PV_INT8 else 0
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, inv_l, qs, c_rows, rows, row_mask, 0, m_full, ks_base, s_ks_m, v_base, s_vm, s_vd,
        b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, D, DP, DV, DVP, BLOCK_M,
        MEAN_ABS, BIAS, HAS_PREFIX, K_FROM_BITS, DOT, ONLINE, False, first)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, inv_l, qs, c_rows, rows, row_mask, m_full, M, ks_base, s_ks_m, v_base, s_vm, s_vd,
        b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, D, DP, DV, DVP, BLOCK_M,
        MEAN_ABS, BIAS, HAS_PREFIX, K_FROM_BITS, DOT, ONLINE, True, first)
    if PV_INT8:
        inv_l = 1.0 / l_i
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, inv_l, qs, c_rows, rows, row_mask, 0, M, ks_base, s_ks_m, v_base, s_vm, s_vd,
            b_base, bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, D, DP, DV, DVP, BLOCK_M,
            MEAN_ABS, BIAS, HAS_PREFIX, K_FROM_BITS, DOT, ONLINE, True, 2)
    return acc, l_i, m_i


@triton.jit
def _scale_rows(eff_ptr, value, length, start, step, BLOCK: tl.constexpr):
    """eff[r] *= value for rows ``start, start+BLOCK, ...`` stepping by ``step`` (mean_abs finalise)."""
    for r0 in range(start, length, step):
        r = r0 + tl.arange(0, BLOCK)
        mask = r < length
        tl.store(eff_ptr + r, tl.load(eff_ptr + r, mask=mask) * value, mask=mask)


@triton.jit
def _binary_attn_fwd_kernel(
    qs_ptr, ks_ptr, v_ptr, out_ptr, lse_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bias_ptr, vscale_ptr, vstep_ptr,
    s_qs_bh, s_qs_n, s_ks_bh, s_ks_m, s_vb, s_vh, s_vm, s_vd, s_bias_b, s_bias_h, s_bn, s_bm,
    H, N, M, scale_log2, inv_nd, inv_md, table_rows, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr, BIAS: tl.constexpr,
    HAS_PREFIX: tl.constexpr, STATIC_MAX: tl.constexpr, LIMIT: tl.constexpr, P_OFFSET: tl.constexpr,
    PV_INT8: tl.constexpr, Q_FROM_BITS: tl.constexpr, K_FROM_BITS: tl.constexpr, DOT: tl.constexpr,
):
    """Binary attention forward for one (query block, batch*head); see the module notation."""
    scale_log2 = tl.cast(scale_log2, tl.float32)  # float scalars may arrive as float64 under Inductor
    inv_nd = tl.cast(inv_nd, tl.float32)
    inv_md = tl.cast(inv_md, tl.float32)
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    bh64 = bh.to(tl.int64)
    qs = load_signs(qs_ptr + bh64 * s_qs_bh, rows, row_mask, s_qs_n, D, DP, Q_FROM_BITS)  # (BLOCK_N, DP)
    ks_base = ks_ptr + bh64 * s_ks_bh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh
    b_base = b_ptr + bh64 * M
    if MEAN_ABS:
        a_head = tl.load(sums_q_ptr + bh) * inv_nd
        b_head = tl.load(sums_k_ptr + bh) * inv_md
        c_rows = tl.zeros([BLOCK_N], dtype=tl.float32) + a_head * scale_log2 * b_head
        b_max = 1.0
        _scale_rows(a_ptr + bh64 * N, a_head, N, pid_n * BLOCK_N, N, BLOCK_N)
        _scale_rows(b_ptr + bh64 * M, b_head, M, pid_n * BLOCK_N, tl.num_programs(0) * BLOCK_N, BLOCK_N)
    else:
        c_rows = tl.load(a_ptr + bh64 * N + rows, mask=row_mask, other=0.0) * scale_log2
        b_max = abs_max(b_base, M, BLOCK_M)
    row_shift = 0.0  # a per-head bias shifts every score of the row: folded into the lse only
    beta_max = 0.0
    bias_base = bias_ptr
    if BIAS == 1:
        row_shift = tl.load(bias_ptr + h) * 1.4426950408889634  # log2(e)
    if BIAS == 2:
        bias_base = bias_ptr + h * table_rows
        beta_max = abs_max(bias_base, table_rows, BLOCK_M)
    if BIAS == 3 or BIAS == 4:
        bias_base = bias_ptr + b.to(tl.int64) * s_bias_b + h.to(tl.int64) * s_bias_h
    bound = tl.abs(c_rows) * b_max * D + beta_max  # (BLOCK_N,) >= |s2_ij|
    vscale = tl.zeros([DVP], dtype=tl.float32)
    if PV_INT8:
        vscale = tl.load(vscale_ptr + bh64 * DV + tl.arange(0, DVP), mask=tl.arange(0, DVP) < DV, other=0.0)
    online_m = tl.zeros([BLOCK_N], dtype=tl.float32) + NEG_INIT
    if STATIC_MAX:
        if tl.max(bound, axis=0) * 2.0 <= LIMIT:
            acc, l_i, m_i = _fwd_rows(
                bound - P_OFFSET, qs, c_rows, rows, row_mask, ks_base, s_ks_m, v_base, s_vm, s_vd, b_base,
                bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N, D, DP, DV, DVP, BLOCK_M,
                MEAN_ABS, BIAS, HAS_PREFIX, K_FROM_BITS, DOT, False, PV_INT8)
        else:
            acc, l_i, m_i = _fwd_rows(
                online_m, qs, c_rows, rows, row_mask, ks_base, s_ks_m, v_base, s_vm, s_vd, b_base,
                bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N, D, DP, DV, DVP, BLOCK_M,
                MEAN_ABS, BIAS, HAS_PREFIX, K_FROM_BITS, DOT, True, PV_INT8)
    else:
        acc, l_i, m_i = _fwd_rows(
            online_m, qs, c_rows, rows, row_mask, ks_base, s_ks_m, v_base, s_vm, s_vd, b_base,
            bias_base, s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N, D, DP, DV, DVP, BLOCK_M,
            MEAN_ABS, BIAS, HAS_PREFIX, K_FROM_BITS, DOT, True, PV_INT8)
    dv = tl.arange(0, DVP)
    if PV_INT8:
        vstep = tl.load(vstep_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0)
        out = acc * (vstep / 255.0)[None, :]
    else:
        out = acc / l_i[:, None]
    out_rows = bh64 * N + rows
    tl.store(out_ptr + out_rows[:, None] * DV + dv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (dv < DV)[None, :])
    lse = (m_i + tl.log2(l_i) + row_shift) * 0.6931471805599453  # ln(2): back to natural log
    tl.store(lse_ptr + out_rows, lse, mask=row_mask)
