"""Per-program row scalars and the epilogue of the Hopper Gluon forward (``kernel_sage``).

``_row_scalars``: the weighting scalar(s) of the program's query rows, the static row bound and the
bias base pointer; mean_abs also writes this program's share of the a_eff / b_eff rows.
``_store``: out = o / l, lse and the row state the backward reads; ``_store_tail``: the value tail's channels.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LOG2E = gl.constexpr(1.4426950408889634)  # 1 / ln(2)
LN2 = gl.constexpr(0.6931471805599453)  # ln(2)
NEG_INIT = gl.constexpr(-3.4028234663852886e38)  # running-max start -FLT_MAX: finite, as the tl.dot kernels'
# (a row whose every score is -FLT_MAX, a finfo.min padding fill, then averages uniformly, as the reference)
TINY = gl.constexpr(5.421010862427522e-20)  # 2**-64: beta * TINY - FLT_MAX is -FLT_MAX for finite beta, -inf for -inf
BIAS_NONE = gl.constexpr(0)
BIAS_HEAD = gl.constexpr(1)
BIAS_TABLE = gl.constexpr(2)  # gathered per score from the launcher's per-head table rows (``table_rows_operand``)
BIAS_DENSE = gl.constexpr(3)
BIAS_MASK = gl.constexpr(4)


@gluon.jit
def _fill_rows(ptr, value, length, start, step, BLOCK: gl.constexpr, num_warps: gl.constexpr):
    """``ptr[r] = value`` for rows ``start, start + BLOCK, ...`` stepping by ``step`` (mean_abs scalars)."""
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    for r0 in range(start, length, step):
        r = r0 + gl.arange(0, BLOCK, layout=layout)
        gl.store(ptr + r, gl.full([BLOCK], value, gl.float32, layout), mask=r < length)


@gluon.jit
def _row_scalars(a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr, beta_max_ptr, s_bias_b, s_bias_h,
                 bh, b, h, pid_n, n_prog, N, M, scale_log2, inv_nd, inv_md, D: gl.constexpr, MEAN_ABS: gl.constexpr,
                 BIAS: gl.constexpr, BETA_MAX: gl.constexpr, BLOCK_N: gl.constexpr, row_layout: gl.constexpr,
                 num_warps: gl.constexpr):
    """``(rows, row_mask, c, c_rows, bound, row_shift, bias_base, b_rows_ptr)`` of the program's rows.

    mean_abs: ``c = scale a b log2 e`` of the (batch, head), and this program's share of the a_eff /
    b_eff rows written; token/none: ``c_i = scale a_i log2 e`` per row. ``bound_i >= |s2_ij|``.
    ``pid_n`` / ``n_prog``: this query tile's index and the number of query tiles of a (batch, head).
    """
    bh64 = bh.to(gl.int64)
    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=row_layout)
    row_mask = rows < N
    scale_log2 = scale_log2.to(gl.float32)
    if MEAN_ABS:
        a_head = gl.load(sums_q_ptr + bh) * inv_nd
        b_head = gl.load(sums_k_ptr + bh) * inv_md
        c = a_head * scale_log2 * b_head
        c_rows = gl.full([BLOCK_N], 0.0, gl.float32, row_layout) + c
        b_max = 1.0
        _fill_rows(a_ptr + bh64 * N, a_head, N, pid_n * BLOCK_N, N, BLOCK_N, num_warps)
        _fill_rows(b_ptr + bh64 * M, b_head, M, pid_n * BLOCK_N, n_prog * BLOCK_N, BLOCK_N, num_warps)
    else:
        c = 0.0
        c_rows = gl.load(a_ptr + bh64 * N + rows, mask=row_mask, other=0.0) * scale_log2
        b_max = gl.load(bmax_ptr + bh)
    row_shift = 0.0
    bias_base = bias_ptr
    if BIAS == BIAS_HEAD:  # a per-head shift moves every score of a row: only the lse takes it
        row_shift = gl.load(bias_ptr + h) * LOG2E
    if BIAS == BIAS_DENSE or BIAS == BIAS_MASK:
        bias_base = bias_ptr + b.to(gl.int64) * s_bias_b + h.to(gl.int64) * s_bias_h
    if BIAS == BIAS_TABLE:  # this head's row of the table operand (``launcher.table_rows_operand``)
        bias_base = bias_ptr + h.to(gl.int64) * s_bias_h
    beta_max = 0.0
    if BETA_MAX:
        beta_max = gl.load(beta_max_ptr + h)  # max |beta2| of this head, log2 units
    bound = gl.abs(c_rows) * b_max * D + beta_max  # (BLOCK_N,) >= |s2_ij|
    return rows, row_mask, c, c_rows, bound, row_shift, bias_base, b_ptr + bh64 * M


@gluon.jit
def _store(out_base, s_on, lse_ptr, state_ptr, o, l_i, m_i, row_shift, row0, rows, row_mask, start, N,
           DV: gl.constexpr, BLOCK_N: gl.constexpr, DVP: gl.constexpr, o_layout: gl.constexpr):
    """out = o / l at ``out_base + row * s_on`` (the program's (batch, head), channels contiguous); lse
    ``(B, H, N)`` natural log; row state ``(B, H, N, 2)``: ``m + row_shift`` and ``log2(l)`` apart (the
    backward's ``exp2((s2 - m) - log2 l)``)."""
    o_rows = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, o_layout))
    o_cols = gl.arange(0, DVP, layout=gl.SliceLayout(0, o_layout))
    out = o / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    ptrs = out_base + o_rows[:, None].to(gl.int64) * s_on + o_cols[None, :]
    gl.store(ptrs, out.to(out_base.dtype.element_ty), mask=(o_rows < N)[:, None] & (o_cols < DV)[None, :])
    lse = (m_i + gl.log2(l_i) + row_shift) * LN2
    gl.store(lse_ptr + row0 + rows, lse, mask=row_mask)
    gl.store(state_ptr + 2 * (row0 + rows), m_i + row_shift, mask=row_mask)
    gl.store(state_ptr + 2 * (row0 + rows) + 1, gl.log2(l_i), mask=row_mask)


@gluon.jit
def _store_tail(out_base, s_on, ot, l_i, start, N, DV: gl.constexpr, BLOCK_N: gl.constexpr, DVP: gl.constexpr,
                DVT: gl.constexpr, ot_layout: gl.constexpr):
    """out channels ``[DVP, DVP + DVT)`` below DV = the value tail ``ot / l`` (nothing when ``DVT`` is 0)."""
    if DVT > 0:
        o_rows = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ot_layout))
        o_cols = DVP + gl.arange(0, DVT, layout=gl.SliceLayout(0, ot_layout))
        out = ot / gl.convert_layout(l_i, gl.SliceLayout(1, ot_layout))[:, None]
        ptrs = out_base + o_rows[:, None].to(gl.int64) * s_on + o_cols[None, :]
        gl.store(ptrs, out.to(out_base.dtype.element_ty), mask=(o_rows < N)[:, None] & (o_cols < DV)[None, :])
