"""The tl.dot binary-attention forward kernel: one source, two named option sets ("v1", "v2").

Parallelisation: program ``(pid_n, bh)`` owns query rows ``i in [pid_n*BLOCK_N, +BLOCK_N)`` of
batch*head ``bh`` and walks every key tile (``forward_tiles``, notation there); grid
``(cdiv(N, BLOCK_N), B*H)``. No inter-program communication: the per-head sums were reduced by the
stats pass (``stats.py``) before launch; the ``mean_abs`` programs of a head write the same scalar
into the saved ``a``/``b`` rows (each program a strided share of the rows).

Constexpr options (the launcher's option sets, ``forward.OPTION_SETS``):
- ``SCALARS``: where the static bound's maxima come from.
  ``SCALARS_IN_KERNEL`` ("v1"): the stats pass wrote ``eff = given * (1 or NaN)`` for every weighting;
  the kernel multiplies it by the head mean (``mean_abs``) and reduces ``max |b|`` and a table bias's
  ``max |beta2|`` itself. ``SCALARS_GIVEN`` ("v2"): ``max |b|`` (stats pass) and ``max |beta2|``
  (``BETA_MAX``, one torch amax) arrive per head; ``mean_abs`` rows are filled with the head mean.
- ``SIGN_STRIDES``: the int8 sign tensors' strides arrive as arguments ("v1") or are those of their
  ``(B, H, L, DP)`` layout, compile-time in ``DP`` ("v2"). Both launches pass the same layout; the
  two forms are kept so each option set compiles to the kernel that was measured.
- ``PV_INT8`` (``pv_quant == "int8"``, "v1" only): the normalised P is needed before rounding it to
  1/255 steps: a (m, l) pass, then a P.V pass.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .forward_tiles import attend_rows, bias_rows, store_rows
from .tiles import BIAS_TABLE, abs_max, aligned, load_signs

SCALARS_IN_KERNEL = tl.constexpr(0)
SCALARS_GIVEN = tl.constexpr(1)


@triton.jit
def _scale_rows(eff_ptr, value, length, start, step, BLOCK: tl.constexpr):
    """eff[r] *= value for rows ``start, start+BLOCK, ...`` stepping by ``step`` (mean_abs finalise)."""
    for r0 in range(start, length, step):
        r = r0 + tl.arange(0, BLOCK)
        mask = r < length
        tl.store(eff_ptr + r, tl.load(eff_ptr + r, mask=mask) * value, mask=mask)


@triton.jit
def _fill_rows(ptr, value, length, start, step, BLOCK: tl.constexpr):
    """ptr[r] = value for rows ``start, start+BLOCK, ...`` stepping by ``step`` (mean_abs scalars)."""
    for r0 in range(start, length, step):
        r = r0 + tl.arange(0, BLOCK)
        tl.store(ptr + r, tl.zeros([BLOCK], dtype=tl.float32) + value, mask=r < length)


@triton.jit
def _binary_attn_fwd_kernel(
    qs_ptr, ks_ptr, v_ptr, out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr,
    beta_max_ptr, vscale_ptr, vstep_ptr,
    s_qs_bh, s_qs_n, s_ks_bh, s_ks_m, s_vb, s_vh, s_vm, s_vd, s_ob, s_oh, s_on, s_bias_b, s_bias_h, s_bn, s_bm,
    H, N, M, scale_log2, inv_nd, inv_md, table_rows, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, MEAN_ABS: tl.constexpr, BIAS: tl.constexpr,
    HAS_PREFIX: tl.constexpr, STATIC_MAX: tl.constexpr, LIMIT: tl.constexpr, P_OFFSET: tl.constexpr,
    DOT: tl.constexpr, SCALARS: tl.constexpr, SIGN_STRIDES: tl.constexpr, BETA_MAX: tl.constexpr,
    PV_INT8: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Binary attention forward for one (query block, batch*head); see the module notation.

    Arguments an option set does not read arrive as None (constexpr): the v1 set leaves ``bmax_ptr``
    and ``beta_max_ptr``, the v2 set the sign strides and the 8-bit P.V scales.
    """
    scale_log2 = tl.cast(scale_log2, tl.float32)  # float scalars arrive as float64 under Inductor
    s_vb, s_vh, s_vm = aligned(s_vb, ROW_ALIGN), aligned(s_vh, ROW_ALIGN), aligned(s_vm, ROW_ALIGN)  # V and out:
    s_ob, s_oh, s_on = aligned(s_ob, ROW_ALIGN), aligned(s_oh, ROW_ALIGN), aligned(s_on, ROW_ALIGN)  # 16 B at D 72
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h = bh % H
    h64 = h.to(tl.int64)
    bh64 = bh.to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    v_base = v_ptr + b64 * s_vb + h64 * s_vh
    # Q signs from the int8 tensor: a loaded operand stays in shared memory for the tensor-core dot;
    # signs computed in registers are re-read from shared memory byte by byte in every key tile.
    if SIGN_STRIDES:
        qs = load_signs(qs_ptr + bh64 * s_qs_bh, rows, row_mask, s_qs_n, DP)  # (BLOCK_N, DP)
        k_signs, s_ksm, s_ksd = ks_ptr + bh64 * s_ks_bh, s_ks_m, 1
    else:
        qs = load_signs(qs_ptr + bh64 * N * DP, rows, row_mask, DP, DP)  # (BLOCK_N, DP)
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
        # the head's programs share the rows: a from this block's start by N (one pass), b by the grid
        if SCALARS == SCALARS_IN_KERNEL:
            _scale_rows(a_ptr + bh64 * N, a_head, N, pid_n * BLOCK_N, N, BLOCK_N)
            _scale_rows(b_base, b_head, M, pid_n * BLOCK_N, tl.num_programs(0) * BLOCK_N, BLOCK_N)
        else:
            _fill_rows(a_ptr + bh64 * N, a_head, N, pid_n * BLOCK_N, N, BLOCK_N)
            _fill_rows(b_base, b_head, M, pid_n * BLOCK_N, tl.num_programs(0) * BLOCK_N, BLOCK_N)
    else:
        c_rows = tl.load(a_ptr + bh64 * N + rows, mask=row_mask, other=0.0) * scale_log2
        if SCALARS == SCALARS_IN_KERNEL:
            b_max = abs_max(b_base, M, BLOCK_M)
        else:
            b_max = tl.load(bmax_ptr + bh)
    bias_base, row_shift = bias_rows(bias_ptr, b64, h64, table_rows, s_bias_b, s_bias_h, BIAS=BIAS)
    beta_max = 0.0
    if SCALARS == SCALARS_IN_KERNEL and BIAS == BIAS_TABLE:
        beta_max = abs_max(bias_base, table_rows, BLOCK_M)
    if BETA_MAX:
        beta_max = tl.load(beta_max_ptr + h)  # max |beta2| of this head, log2 units
    bound = tl.abs(c_rows) * b_max * D + beta_max  # (BLOCK_N,) >= |s2_ij|
    vscale = bound  # the 8-bit P.V scales; a stand-in the loop does not read without PV_INT8
    scale_out = bound
    if PV_INT8:
        dv = tl.arange(0, DVP)
        vscale = tl.load(vscale_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0)
        scale_out = tl.load(vstep_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0) / 255.0
    acc, l_i, m_i = attend_rows(
        bound, qs, c, c_rows, rows, row_mask, k_signs, s_ksm, s_ksd, v_base, s_vm, s_vd, b_base, bias_base,
        s_bn, s_bm, vscale, M, grid_h, grid_w, prefix, BLOCK_N=BLOCK_N, D=D, DP=DP, DV=DV, DVP=DVP,
        BLOCK_M=BLOCK_M, MEAN_ABS=MEAN_ABS, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, DOT=DOT, STATIC_MAX=STATIC_MAX,
        LIMIT=LIMIT, P_OFFSET=P_OFFSET, PV_INT8=PV_INT8)
    store_rows(out_ptr + b64 * s_ob + h64 * s_oh, s_on, lse_ptr, state_ptr, acc, l_i, m_i, row_shift, rows,
               bh64 * N + rows, row_mask, scale_out, DV=DV, DVP=DVP, PV_INT8=PV_INT8)
