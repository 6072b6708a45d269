"""Round-2 forward kernel: scalars and bias maxima precomputed, signs from the stats pass.

Program ``(pid_n, bh)`` owns query rows ``i in [pid_n*BLOCK_N, +BLOCK_N)`` of batch*head ``bh``. The
Q and K signs come from the int8 sign tensors the stats pass (``stats.py``) wrote (the shared loop in
``forward_tiles``, notation there). The scalar maxima for the static bound
(max|b|, max|beta2| per head) are passed in, never recomputed per program; ``STATIC_MAX`` False (a
caller's dense bias, no bound known) runs the online maximum alone.

The one-launch inference form (each program reducing its head's sums and signing the floating q/k
in registers, ``HEAD_SUMS``) measured slower than the stats pass everywhere and was removed (round 2,
benchmarks/kernel_notes.md).
Parallelised over (query block, batch*head); no inter-program communication.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .forward_tiles import attend_rows, bias_rows, store_rows
from .tiles import load_signs


@triton.jit
def _fill_rows(ptr, value, length, start, step, BLOCK: tl.constexpr):
    """ptr[r] = value for rows ``start, start+BLOCK, ...`` stepping by ``step`` (mean_abs scalars)."""
    for r0 in range(start, length, step):
        r = r0 + tl.arange(0, BLOCK)
        tl.store(ptr + r, tl.zeros([BLOCK], dtype=tl.float32) + value, mask=r < length)


@triton.jit
def _binary_attn_fwd_v2_kernel(
    qs_ptr, ks_ptr, v_ptr, out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr,
    beta_max_ptr,
    s_vb, s_vh, s_vm, s_vd, s_bias_b, s_bias_h, s_bn, s_bm,
    H, N, M, scale_log2, inv_nd, inv_md, table_rows, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr,
    BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, BETA_MAX: tl.constexpr,
    STATIC_MAX: tl.constexpr, LIMIT: tl.constexpr, P_OFFSET: tl.constexpr, DOT: tl.constexpr,
):
    """Round-2 binary attention forward for one (query block, batch*head); see the module notation."""
    scale_log2 = tl.cast(scale_log2, tl.float32)  # float scalars may arrive as float64 under Inductor
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h = bh % H
    h64 = h.to(tl.int64)
    bh64 = bh.to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    v_base = v_ptr + b64 * s_vb + h64 * s_vh
    # int8 tensors (B, H, L, DP): a loaded Q operand stays in shared memory for the dot
    qs = load_signs(qs_ptr + bh64 * N * DP, rows, row_mask, DP, D, DP, False)
    k_signs, s_ksm, s_ksd = ks_ptr + bh64 * M * DP, DP, 1
    b_base = b_ptr + bh64 * M
    c = 0.0
    if MEAN_ABS:
        sum_q = tl.load(sums_q_ptr + bh)
        sum_k = tl.load(sums_k_ptr + bh)
        a_head = sum_q * tl.cast(inv_nd, tl.float32)
        b_head = sum_k * tl.cast(inv_md, tl.float32)
        c = a_head * scale_log2 * b_head
        c_rows = tl.zeros([BLOCK_N], dtype=tl.float32) + c
        b_max = 1.0
        _fill_rows(a_ptr + bh64 * N, a_head, N, pid_n * BLOCK_N, N, BLOCK_N)
        _fill_rows(b_base, b_head, M, pid_n * BLOCK_N, tl.num_programs(0) * BLOCK_N, BLOCK_N)
    else:
        c_rows = tl.load(a_ptr + bh64 * N + rows, mask=row_mask, other=0.0) * scale_log2
        b_max = tl.load(bmax_ptr + bh)
    bias_base, row_shift = bias_rows(bias_ptr, b64, h64, table_rows, s_bias_b, s_bias_h, BIAS)
    beta_max = 0.0
    if BETA_MAX:
        beta_max = tl.load(beta_max_ptr + h)  # max |beta2| of this head, log2 units
    bound = tl.abs(c_rows) * b_max * D + beta_max  # (BLOCK_N,) >= |s2_ij|
    # `bound` stands in for the 8-bit P.V scales, unused here
    acc, l_i, m_i = attend_rows(
        bound, qs, c, c_rows, rows, row_mask, k_signs, s_ksm, s_ksd, v_base, s_vm, s_vd, b_base, bias_base,
        s_bn, s_bm, bound, M, grid_h, grid_w, prefix, BLOCK_N, D, DP, DV, DVP, BLOCK_M, MEAN_ABS, BIAS,
        HAS_PREFIX, DOT, STATIC_MAX, LIMIT, P_OFFSET, False)
    store_rows(out_ptr, lse_ptr, state_ptr, acc, l_i, m_i, row_shift, bh64 * N + rows, row_mask, bound, DV, DVP, False)
