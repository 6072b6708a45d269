"""The fused binary-attention forward kernel, round 1: int8 Q and K sign tensors.

Program ``(pid_n, bh)`` owns query rows ``i in [pid_n*BLOCK_N, +BLOCK_N)`` of batch*head ``bh``. The
prologue (``prologue.py``) has written the packed sign bits and the int8 ``+-1`` signs of Q and K
and, for ``mean_abs``, the per-(b, h) sums of ``|q|`` and ``|k|``; this kernel finalises the scalars, takes the
static row bound and runs the shared key-tile loop of ``forward_tiles`` (notation, and the
static row maximum, there).
``pv_quant == "int8"`` needs the normalised P before rounding it to 1/255 steps: a (m, l) pass then
a P.V pass. Parallelised over (query block, batch*head); no inter-program communication except the
``mean_abs`` scalars, reduced by the prologue before launch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .forward_tiles import attend_rows, bias_rows, store_rows
from .tiles import BIAS_TABLE, abs_max, load_signs


@triton.jit
def _scale_rows(eff_ptr, value, length, start, step, BLOCK: tl.constexpr):
    """eff[r] *= value for rows ``start, start+BLOCK, ...`` stepping by ``step`` (mean_abs finalise)."""
    for r0 in range(start, length, step):
        r = r0 + tl.arange(0, BLOCK)
        mask = r < length
        tl.store(eff_ptr + r, tl.load(eff_ptr + r, mask=mask) * value, mask=mask)


@triton.jit
def _binary_attn_fwd_kernel(
    qs_ptr, ks_ptr, v_ptr, out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bias_ptr, vscale_ptr,
    vstep_ptr,
    s_qs_bh, s_qs_n, s_ks_bh, s_ks_m, s_vb, s_vh, s_vm, s_vd, s_bias_b, s_bias_h, s_bn, s_bm,
    H, N, M, scale_log2, inv_nd, inv_md, table_rows, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr, BIAS: tl.constexpr,
    HAS_PREFIX: tl.constexpr, STATIC_MAX: tl.constexpr, LIMIT: tl.constexpr, P_OFFSET: tl.constexpr,
    PV_INT8: tl.constexpr, DOT: tl.constexpr,
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
    # Q signs from the int8 tensor: a loaded operand stays in shared memory for the tensor-core dot;
    # signs computed in registers are re-read from shared memory byte by byte in every key tile.
    qs = load_signs(qs_ptr + bh64 * s_qs_bh, rows, row_mask, s_qs_n, D, DP, False)  # (BLOCK_N, DP)
    ks_base = ks_ptr + bh64 * s_ks_bh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh
    b_base = b_ptr + bh64 * M
    if MEAN_ABS:
        a_head = tl.load(sums_q_ptr + bh) * inv_nd
        b_head = tl.load(sums_k_ptr + bh) * inv_md
        c = a_head * scale_log2 * b_head
        c_rows = tl.zeros([BLOCK_N], dtype=tl.float32) + c
        b_max = 1.0
        _scale_rows(a_ptr + bh64 * N, a_head, N, pid_n * BLOCK_N, N, BLOCK_N)
        _scale_rows(b_ptr + bh64 * M, b_head, M, pid_n * BLOCK_N, tl.num_programs(0) * BLOCK_N, BLOCK_N)
    else:
        c = 0.0
        c_rows = tl.load(a_ptr + bh64 * N + rows, mask=row_mask, other=0.0) * scale_log2
        b_max = abs_max(b_base, M, BLOCK_M)
    bias_base, row_shift = bias_rows(bias_ptr, b.to(tl.int64), h.to(tl.int64), table_rows, s_bias_b, s_bias_h, BIAS)
    beta_max = 0.0
    if BIAS == BIAS_TABLE:
        beta_max = abs_max(bias_base, table_rows, BLOCK_M)
    bound = tl.abs(c_rows) * b_max * D + beta_max  # (BLOCK_N,) >= |s2_ij|
    vscale = tl.zeros([DVP], dtype=tl.float32)
    scale_out = vscale
    if PV_INT8:
        dv = tl.arange(0, DVP)
        vscale = tl.load(vscale_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0)
        scale_out = tl.load(vstep_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0) / 255.0
    acc, l_i, m_i = attend_rows(
        bound, qs, c, c_rows, rows, row_mask, ks_base, s_ks_m, 1, v_base, s_vm, s_vd, b_base, bias_base,
        s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N, D, DP, DV, DVP, BLOCK_M, MEAN_ABS, BIAS,
        HAS_PREFIX, DOT, STATIC_MAX, LIMIT, P_OFFSET, PV_INT8)
    store_rows(out_ptr, lse_ptr, state_ptr, acc, l_i, m_i, row_shift, bh64 * N + rows, row_mask, scale_out, DV, DVP,
               PV_INT8)
