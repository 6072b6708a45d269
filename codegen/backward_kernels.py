"""Fused binary-attention backward kernels (one source, specialised by constexpr flags).

Notation (SPEC §4, natural units unless named ``*2``): scores are recomputed from the saved
signs, ``s2_ij = h_ij * a_i * b_j * scale * log2 e + beta2_ij``, ``p_ij = exp2((s2_ij - m2_i) - l2_i)``
with the forward's row state (``m2_i`` the row maximum, ``l2_i = log2 l_i``, saved apart: at |s2| ~ 1e7
``m2 + l2`` rounds to ``m2`` in float32),

    dp_ij = dO_i . V_j      delta_i = sum_j p_ij dp_ij      dS_ij = p_ij (dp_ij - delta_i)
    dV_j  = sum_i p_ij dO_i         da_i = scale sum_j dS_ij h_ij b_j     db_j likewise
    dq_i  = scale a_i clip_i sum_j dS_ij b_j sgn k_j        (ste; dk_j likewise)

Two kernels, both recomputing ``h`` with the int8 tensor-core dot:

- ``_binary_attn_bwd_q_kernel``: program = (query block, batch*head), walks key tiles. Writes
  ``da``, ``dq``, per-row ``sum_j dS`` for a head bias, and ``delta`` unless it is given.
  ``DELTA_GIVEN`` (``delta_i = dO_i . O_i`` from ``_row_dot_kernel``, the same sum since
  ``O_i = sum_j p_ij V_j``): one pass forms ``dS`` exactly. Otherwise, without dq one pass:
  ``da_i = scale (sum_j p dp h b - delta_i sum_j p h b)``; with dq a first pass finds ``delta``
  and a second forms ``dS``.
- ``_binary_attn_bwd_k_kernel``: program = (key block, batch*head), walks query tiles (tiles
  are held transposed, keys x queries). Writes ``dV``, ``db``, ``dk``, the per-key parts of the
  total ``sum_i da_i`` (``NEED_DA_COLS``: all the ``mean_abs`` chain needs) and scatters ``dS``
  into table or dense bias gradients with atomics. Needs ``delta``.

A row without a kept key has ``l2 = -inf``; both kernels read ``m2`` and ``l2`` as at least -FLT_MAX
(``_row_state``), so ``p = exp2(-inf + FLT_MAX) = 0`` there (``-inf - -inf`` would be NaN) and the row adds
nothing, as in the reference.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .tiles import (BIAS_DENSE, BIAS_HEAD, BIAS_MASK, BIAS_NONE, BIAS_TABLE, FLT_MAX, LOG2E, add_dense_bias, aligned,
                    bias_tile, fdot, int_to_float, load_bits, load_signs, mask_keep, round_half_even, table_index)


# passes of the query kernel's key loop (``_q_tiles``)
PASS_DELTA = tl.constexpr(1)  # delta_i = sum_j p dp (and the one-pass da, the head bias's sum_j p)
PASS_DS_DQ = tl.constexpr(2)  # dS from delta: dq, da, the head bias's sum_j dS
PASS_DS = tl.constexpr(3)  # dS from delta without dq: da, the head bias's sum_j dS

@triton.jit
def _row_state(state_base, rows, row_mask, head_shift2):
    """``(m2, l2)`` of the rows from the forward's row state ``(.., N, 2)``: the row maximum (less a head
    shift) and ``log2(l)``, each at least -FLT_MAX. On a row without a kept key (every ``s2`` -inf,
    ``l2 = -inf``) ``exp2((s2 - m2) - l2) = exp2(-inf) = 0``, not NaN; other rows have ``l2 >= 0`` or
    (static bound) a finite ``l2``, untouched. Masked rows read ``m2 = +inf``: ``p = 0``."""
    m2 = tl.load(state_base + 2 * rows, mask=row_mask, other=float("inf")) - head_shift2
    l2 = tl.load(state_base + 2 * rows + 1, mask=row_mask, other=0.0)
    return tl.maximum(m2, -FLT_MAX), tl.maximum(l2, -FLT_MAX)


@triton.jit
def _probs(h, w_rows, w_cols, m2, l2, bias_base, rows, cols, row_mask, col_mask, s_r, s_c, grid_h, grid_w, prefix,
           BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, TRANS: tl.constexpr, MASK_COLS: tl.constexpr):
    """``(p, hf)`` of a score tile: rows x cols are queries x keys, or keys x queries when TRANS.

    ``w_rows * w_cols`` is ``a * b * scale * log2 e``; ``m2`` and ``l2`` (the row maximum and
    ``log2(l)``, apart: ``m2 + l2`` rounds to ``m2`` at |s2| ~ 1e7) broadcast against the tile.
    """
    hf = int_to_float(h)
    # the forward's s2 bit for bit (``score_tile``: ``hf * c`` with ``c = (a scale log2 e) b``), so the row
    # maximum it saved is exact here: at |s2| ~ 1e7 one ulp of difference is a factor 2 in p
    s = hf * (w_rows[:, None] * w_cols[None, :])
    if BIAS == BIAS_TABLE:
        if TRANS:
            idx = tl.trans(table_index(tl.where(col_mask, cols, 0), tl.where(row_mask, rows, 0),
                                       grid_h, grid_w, prefix, HAS_PREFIX))
        else:
            idx = table_index(tl.where(row_mask, rows, 0), tl.where(col_mask, cols, 0),
                              grid_h, grid_w, prefix, HAS_PREFIX)
        s += tl.load(bias_base + idx)
    if BIAS == BIAS_DENSE:
        s = add_dense_bias(s, bias_tile(
            bias_base, rows, cols, row_mask, col_mask, s_r, s_c, grid_h, grid_w, prefix, BIAS=BIAS,
            HAS_PREFIX=HAS_PREFIX, LOG2_UNITS=False))
    if BIAS == BIAS_MASK:
        s = tl.where(mask_keep(bias_base, rows, cols, row_mask, col_mask, s_r, s_c), s, float("-inf"))
    if MASK_COLS:
        s = tl.where(col_mask[None, :], s, float("-inf"))
    return tl.exp2((s - m2) - l2), hf


@triton.jit
def _load_values(v_base, rows, row_mask, s_vm, s_vd, vscale, vstep, DV: tl.constexpr, DVP: tl.constexpr,
                 PV_INT8: tl.constexpr):
    """V tile ``(R, DVP)`` float32 (``V^`` when PV_INT8) and the raw tile for the STE window."""
    dv = tl.arange(0, DVP)
    v = tl.load(v_base + rows[:, None] * s_vm + dv[None, :] * s_vd,
                mask=row_mask[:, None] & (dv < DV)[None, :], other=0.0).to(tl.float32)
    if PV_INT8:
        return round_half_even(v * vscale[None, :]) * vstep[None, :], v
    return v, v


@triton.jit
def _row_dot_kernel(out_ptr, do_ptr, lse_ptr, delta_ptr, H, N, s_ob, s_oh, s_on, s_od, s_db, s_dh, s_dn, s_dd,
                    DV: tl.constexpr, DVP: tl.constexpr, BLOCK_N: tl.constexpr, ROW_ALIGN: tl.constexpr):
    """delta_i = dO_i . O_i in float32 over ``(B, H, N, DV)`` of any strides; program = (row block, b*h).

    A row without a kept key (``lse = -inf``, NaN output) takes ``delta = sum_j p_ij dp_ij = 0``.
    """
    s_ob, s_oh, s_on = aligned(s_ob, ROW_ALIGN), aligned(s_oh, ROW_ALIGN), aligned(s_on, ROW_ALIGN)  # 16-byte loads
    s_db, s_dh, s_dn = aligned(s_db, ROW_ALIGN), aligned(s_dh, ROW_ALIGN), aligned(s_dn, ROW_ALIGN)  # at Dv 72
    bh = tl.program_id(1)
    b64 = (bh // H).to(tl.int64)
    h64 = (bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dv = tl.arange(0, DVP)
    mask = (rows < N)[:, None] & (dv < DV)[None, :]
    o = tl.load(out_ptr + b64 * s_ob + h64 * s_oh + rows[:, None] * s_on + dv[None, :] * s_od, mask=mask, other=0.0)
    do = tl.load(do_ptr + b64 * s_db + h64 * s_dh + rows[:, None] * s_dn + dv[None, :] * s_dd, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * N + rows, mask=rows < N, other=0.0)
    delta = tl.where(lse == float("-inf"), 0.0, delta)
    tl.store(delta_ptr + bh.to(tl.int64) * N + rows, delta, mask=rows < N)


@triton.jit
def _q_tiles(
    acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc, qs, do, c_rows, m2, l2, rows, row_mask, lo, hi,
    ks_base, s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, vstep, M, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, BLOCK_M: tl.constexpr,
    BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, PV_INT8: tl.constexpr,
    DOT: tl.constexpr, DS_DOT: tl.constexpr, MASK_M: tl.constexpr, PASS: tl.constexpr,
    NEED_DA: tl.constexpr, HEAD_DBIAS: tl.constexpr,
):
    """Key tiles ``[lo, hi)`` of the query kernel at pass ``PASS`` (module constants ``PASS_*``)."""
    for start in range(lo, hi, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        col_mask = cols < M
        ks = load_signs(ks_base, cols, col_mask, s_ks_m, DP)  # (BLOCK_M, DP)
        bj = tl.load(b_base + cols, mask=col_mask, other=0.0)
        p, hf = _probs(
            tl.dot(qs, tl.trans(ks), out_dtype=tl.int32), c_rows, bj, m2[:, None], l2[:, None], bias_base, rows, cols,
            row_mask, col_mask, s_bn, s_bm, grid_h, grid_w, prefix, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, TRANS=False,
            MASK_COLS=MASK_M)
        v, _ = _load_values(v_base, cols, col_mask, s_vm, s_vd, vscale, vstep, DV=DV, DVP=DVP, PV_INT8=PV_INT8)
        dp = fdot(do, tl.trans(v), tl.zeros(p.shape, dtype=tl.float32), DOT)  # (BLOCK_N, BLOCK_M)
        if PASS == PASS_DELTA:
            pdp = p * dp
            delta += tl.sum(pdp, axis=1)
            if NEED_DA:
                hb = hf * bj[None, :]
                x_sum += tl.sum(pdp * hb, axis=1)
                y_sum += tl.sum(p * hb, axis=1)
            if HEAD_DBIAS:
                p_sum += tl.sum(p, axis=1)
        else:
            ds = p * (dp - delta[:, None])
            if NEED_DA:
                da_acc += tl.sum(ds * hf * bj[None, :], axis=1)
            if HEAD_DBIAS:
                ds_sum += tl.sum(ds, axis=1)
            if PASS == PASS_DS_DQ:
                acc = fdot(ds * bj[None, :], ks, acc, DS_DOT)  # (BLOCK_N, DP)
    return acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc


@triton.jit
def _binary_attn_bwd_q_kernel(
    qs_ptr, ks_ptr, v_ptr, do_ptr, state_ptr, a_ptr, b_ptr, bias_ptr, vscale_ptr, vstep_ptr, qclip_ptr,
    delta_ptr, da_ptr, dq_ptr, dbias_rows_ptr,
    s_qs_bh, s_qs_n, s_ks_bh, s_ks_m, s_vb, s_vh, s_vm, s_vd, s_dob, s_doh, s_don, s_dod,
    s_bias_b, s_bias_h, s_bn, s_bm, s_clip_n,
    H, N, M, scale, scale_log2, table_rows, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    PV_INT8: tl.constexpr, DOT: tl.constexpr, DS_DOT: tl.constexpr,
    NEED_DA: tl.constexpr, NEED_DQ: tl.constexpr, HEAD_DBIAS: tl.constexpr, DELTA_GIVEN: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """Query side of the backward for one (query block, batch*head); see the module notation."""
    scale = tl.cast(scale, tl.float32)  # float scalars arrive as float64 under Inductor
    scale_log2 = tl.cast(scale_log2, tl.float32)
    s_vb, s_vh, s_vm = aligned(s_vb, ROW_ALIGN), aligned(s_vh, ROW_ALIGN), aligned(s_vm, ROW_ALIGN)  # 16-byte loads
    s_dob, s_doh, s_don = aligned(s_dob, ROW_ALIGN), aligned(s_doh, ROW_ALIGN), aligned(s_don, ROW_ALIGN)  # at Dv 72
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    qs = load_signs(qs_ptr + bh64 * s_qs_bh, rows, row_mask, s_qs_n, DP)
    dv = tl.arange(0, DVP)
    do = tl.load(do_ptr + b.to(tl.int64) * s_dob + h.to(tl.int64) * s_doh + rows[:, None] * s_don + dv[None, :] * s_dod,
                 mask=row_mask[:, None] & (dv < DV)[None, :], other=0.0).to(tl.float32)
    a_rows = tl.load(a_ptr + bh64 * N + rows, mask=row_mask, other=0.0)
    c_rows = a_rows * scale_log2  # a_i * scale * log2(e), the forward's scale_log2 argument
    ks_base = ks_ptr + bh64 * s_ks_bh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh
    b_base = b_ptr + bh64 * M
    bias_base = bias_ptr
    head_shift2 = 0.0
    if BIAS == BIAS_HEAD:
        head_shift2 = tl.load(bias_ptr + h) * LOG2E  # a head bias only shifts the row
    m2, l2 = _row_state(state_ptr + bh64 * N * 2, rows, row_mask, head_shift2)  # once per program
    if BIAS == BIAS_TABLE:
        bias_base = bias_ptr + h * table_rows
    if BIAS == BIAS_DENSE or BIAS == BIAS_MASK:
        bias_base = bias_ptr + b.to(tl.int64) * s_bias_b + h.to(tl.int64) * s_bias_h
    vscale = tl.zeros([DVP], dtype=tl.float32)
    vstep = vscale
    if PV_INT8:
        vscale = tl.load(vscale_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0)
        vstep = tl.load(vstep_ptr + bh64 * DV + dv, mask=dv < DV, other=0.0)
    zero = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, DP], dtype=tl.float32)
    m_full = (M // BLOCK_M) * BLOCK_M
    out_rows = bh64 * N + rows
    if DELTA_GIVEN:  # one pass: dS exactly from the given delta
        pass_ds: tl.constexpr = PASS_DS_DQ if NEED_DQ else PASS_DS
        delta = tl.load(delta_ptr + out_rows, mask=row_mask, other=0.0)
        acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc = _q_tiles(
            acc, delta, zero, zero, zero, zero, zero, qs, do, c_rows, m2, l2, rows, row_mask, 0, m_full, ks_base,
            s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, vstep, M, grid_h, grid_w, prefix, D=D,
            DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, PV_INT8=PV_INT8, DOT=DOT,
            DS_DOT=DS_DOT, MASK_M=False, PASS=pass_ds, NEED_DA=NEED_DA, HEAD_DBIAS=HEAD_DBIAS)
        acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc = _q_tiles(
            acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc, qs, do, c_rows, m2, l2, rows, row_mask, m_full, M,
            ks_base, s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, vstep, M, grid_h, grid_w,
            prefix, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, PV_INT8=PV_INT8,
            DOT=DOT, DS_DOT=DS_DOT, MASK_M=True, PASS=pass_ds, NEED_DA=NEED_DA, HEAD_DBIAS=HEAD_DBIAS)
    else:
        one_pass_da: tl.constexpr = NEED_DA and not NEED_DQ
        head_pass1: tl.constexpr = HEAD_DBIAS and not NEED_DQ
        acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc = _q_tiles(
            acc, zero, zero, zero, zero, zero, zero, qs, do, c_rows, m2, l2, rows, row_mask, 0, m_full, ks_base,
            s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, vstep, M, grid_h, grid_w, prefix, D=D,
            DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, PV_INT8=PV_INT8, DOT=DOT,
            DS_DOT=DS_DOT, MASK_M=False, PASS=PASS_DELTA, NEED_DA=one_pass_da, HEAD_DBIAS=head_pass1)
        acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc = _q_tiles(
            acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc, qs, do, c_rows, m2, l2, rows, row_mask, m_full, M,
            ks_base, s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, vstep, M, grid_h, grid_w,
            prefix, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, PV_INT8=PV_INT8,
            DOT=DOT, DS_DOT=DS_DOT, MASK_M=True, PASS=PASS_DELTA, NEED_DA=one_pass_da, HEAD_DBIAS=head_pass1)
        tl.store(delta_ptr + out_rows, delta, mask=row_mask)
        if NEED_DQ:
            acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc = _q_tiles(
                acc, delta, x_sum, y_sum, p_sum, ds_sum, da_acc, qs, do, c_rows, m2, l2, rows, row_mask, 0, M,
                ks_base, s_ks_m, v_base, s_vm, s_vd, b_base, bias_base, s_bn, s_bm, vscale, vstep, M, grid_h, grid_w,
                prefix, D=D, DP=DP, DV=DV, DVP=DVP, BLOCK_M=BLOCK_M, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX,
                PV_INT8=PV_INT8, DOT=DOT, DS_DOT=DS_DOT, MASK_M=True, PASS=PASS_DS_DQ, NEED_DA=NEED_DA,
                HEAD_DBIAS=HEAD_DBIAS)
        elif NEED_DA:
            da_acc = x_sum - delta * y_sum
        elif HEAD_DBIAS:
            ds_sum = delta * (1.0 - p_sum)
    if NEED_DQ:
        clip = load_bits(qclip_ptr + bh64 * N * s_clip_n, rows, row_mask, s_clip_n, D=D, DP=DP)
        dq = acc * clip * (scale * a_rows)[:, None]
        d = tl.arange(0, DP)
        tl.store(dq_ptr + out_rows[:, None] * D + d[None, :], dq, mask=row_mask[:, None] & (d < D)[None, :])
    if NEED_DA:
        tl.store(da_ptr + out_rows, scale * da_acc, mask=row_mask)
    if HEAD_DBIAS:
        tl.store(dbias_rows_ptr + out_rows, ds_sum, mask=row_mask)


@triton.jit
def _k_tiles(
    dv_acc, dk_acc, db_acc, da_acc, ks, v, bj_w, lo, hi, cols, col_mask, qs_base, s_qs_n, do_base, s_don, s_dod,
    a_base, state_base, delta_base, bias_base, gbias_base, s_bn, s_bm, s_gn, s_gm, head_shift2, N, scale_log2,
    grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr, BLOCK_N: tl.constexpr,
    BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, PV_INT8: tl.constexpr,
    DOT: tl.constexpr, DS_DOT: tl.constexpr, NEED_DS: tl.constexpr, NEED_DB: tl.constexpr,
    NEED_DK: tl.constexpr, BIAS_GRAD: tl.constexpr, NEED_DA_COLS: tl.constexpr, MASK_N: tl.constexpr,
):
    """Query tiles ``[lo, hi)`` of the key kernel; tiles are keys x queries (``cols`` = keys here)."""
    dvr = tl.arange(0, DVP)
    for start in range(lo, hi, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)  # query indices
        row_mask = rows < N
        qs = load_signs(qs_base, rows, row_mask, s_qs_n, DP)  # (BLOCK_N, DP)
        a_i = tl.load(a_base + rows, mask=row_mask, other=0.0)
        m2, l2 = _row_state(state_base, rows, row_mask, head_shift2)
        pt, hf = _probs(
            tl.dot(ks, tl.trans(qs), out_dtype=tl.int32), bj_w, a_i * scale_log2, m2[None, :], l2[None, :], bias_base,
            cols, rows, col_mask, row_mask, s_bm, s_bn, grid_h, grid_w, prefix, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX,
            TRANS=True, MASK_COLS=MASK_N)  # (BLOCK_M, BLOCK_N)
        do = tl.load(do_base + rows[:, None] * s_don + dvr[None, :] * s_dod,
                     mask=row_mask[:, None] & (dvr < DV)[None, :], other=0.0)
        if PV_INT8:
            dv_acc = fdot(round_half_even(pt * 255.0) * (1.0 / 255.0), do, dv_acc, DOT)
        else:
            dv_acc = fdot(pt, do, dv_acc, DOT)
        if NEED_DS:
            dpt = fdot(v, tl.trans(do.to(tl.float32)), tl.zeros(pt.shape, dtype=tl.float32), DOT)
            delta = tl.load(delta_base + rows, mask=row_mask, other=0.0)
            dst = pt * (dpt - delta[None, :])  # (BLOCK_M, BLOCK_N)
            if NEED_DB:
                db_acc += tl.sum(dst * hf * a_i[None, :], axis=1)
            if NEED_DA_COLS:
                da_acc += tl.sum(dst * hf, axis=1)
            if NEED_DK:
                dk_acc = fdot(dst * a_i[None, :], qs, dk_acc, DS_DOT)
            pair_mask = col_mask[:, None] & row_mask[None, :]
            if BIAS_GRAD == BIAS_TABLE:
                idx = tl.trans(table_index(tl.where(row_mask, rows, 0), tl.where(col_mask, cols, 0),
                                           grid_h, grid_w, prefix, HAS_PREFIX))
                tl.atomic_add(gbias_base + idx, dst, mask=pair_mask)
            if BIAS_GRAD == BIAS_DENSE:
                tl.atomic_add(gbias_base + rows[None, :] * s_gn + cols[:, None] * s_gm, dst, mask=pair_mask)
    return dv_acc, dk_acc, db_acc, da_acc


@triton.jit
def _binary_attn_bwd_k_kernel(
    qs_ptr, ks_ptr, v_ptr, do_ptr, state_ptr, delta_ptr, a_ptr, b_ptr, bias_ptr, gbias_ptr, vscale_ptr, vstep_ptr,
    kclip_ptr, dv_ptr, dk_ptr, db_ptr, da_cols_ptr,
    s_qs_bh, s_qs_n, s_ks_bh, s_ks_m, s_vb, s_vh, s_vm, s_vd, s_dob, s_doh, s_don, s_dod,
    s_bias_b, s_bias_h, s_bn, s_bm, s_gb, s_gh, s_gn, s_gm, s_clip_m, s_dvb, s_dvh, s_dvm,
    H, N, M, scale, scale_log2, table_rows, grid_h, grid_w, prefix,
    D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    PV_INT8: tl.constexpr, DOT: tl.constexpr, DS_DOT: tl.constexpr,
    NEED_DV: tl.constexpr, NEED_DB: tl.constexpr, NEED_DK: tl.constexpr, BIAS_GRAD: tl.constexpr,
    NEED_DA_COLS: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Key side of the backward for one (key block, batch*head); see the module notation.

    ``NEED_DA_COLS``: writes ``scale b_j sum_i dS_ij h_ij`` per key, whose sum over keys is ``sum_i da_i``.
    """
    scale = tl.cast(scale, tl.float32)  # float scalars arrive as float64 under Inductor
    scale_log2 = tl.cast(scale_log2, tl.float32)
    s_vb, s_vh, s_vm = aligned(s_vb, ROW_ALIGN), aligned(s_vh, ROW_ALIGN), aligned(s_vm, ROW_ALIGN)  # 16-byte loads
    s_dob, s_doh, s_don = aligned(s_dob, ROW_ALIGN), aligned(s_doh, ROW_ALIGN), aligned(s_don, ROW_ALIGN)  # at Dv 72
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(tl.int64)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # key indices (the tile rows)
    col_mask = cols < M
    ks = load_signs(ks_ptr + bh64 * s_ks_bh, cols, col_mask, s_ks_m, DP)  # (BLOCK_M, DP)
    b_j = tl.load(b_ptr + bh64 * M + cols, mask=col_mask, other=0.0)
    dvr = tl.arange(0, DVP)
    vscale = tl.zeros([DVP], dtype=tl.float32)
    vstep = vscale
    if PV_INT8:
        vscale = tl.load(vscale_ptr + bh64 * DV + dvr, mask=dvr < DV, other=0.0)
        vstep = tl.load(vstep_ptr + bh64 * DV + dvr, mask=dvr < DV, other=0.0)
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh
    v, v_raw = _load_values(v_base, cols, col_mask, s_vm, s_vd, vscale, vstep, DV=DV, DVP=DVP, PV_INT8=PV_INT8)
    head_shift2 = 0.0
    bias_base = bias_ptr
    gbias_base = gbias_ptr
    if BIAS == BIAS_HEAD:
        head_shift2 = tl.load(bias_ptr + h) * LOG2E
    if BIAS == BIAS_TABLE:
        bias_base = bias_ptr + h * table_rows
        gbias_base = gbias_ptr + h * table_rows
    if BIAS == BIAS_DENSE or BIAS == BIAS_MASK:
        bias_base = bias_ptr + b.to(tl.int64) * s_bias_b + h.to(tl.int64) * s_bias_h
        gbias_base = gbias_ptr + b.to(tl.int64) * s_gb + h.to(tl.int64) * s_gh
    need_ds: tl.constexpr = NEED_DB or NEED_DK or BIAS_GRAD != BIAS_NONE or NEED_DA_COLS
    dv_acc = tl.zeros([BLOCK_M, DVP], dtype=tl.float32)
    dk_acc = tl.zeros([BLOCK_M, DP], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    da_acc = db_acc
    n_full = (N // BLOCK_N) * BLOCK_N
    do_base = do_ptr + b.to(tl.int64) * s_dob + h.to(tl.int64) * s_doh
    for lo_hi in tl.static_range(2):
        lo = 0 if lo_hi == 0 else n_full
        hi = n_full if lo_hi == 0 else N
        dv_acc, dk_acc, db_acc, da_acc = _k_tiles(
            dv_acc, dk_acc, db_acc, da_acc, ks, v, b_j, lo, hi, cols, col_mask, qs_ptr + bh64 * s_qs_bh, s_qs_n,
            do_base, s_don, s_dod, a_ptr + bh64 * N, state_ptr + bh64 * N * 2, delta_ptr + bh64 * N, bias_base,
            gbias_base, s_bn, s_bm, s_gn, s_gm, head_shift2, N, scale_log2, grid_h, grid_w, prefix, D=D, DP=DP, DV=DV,
            DVP=DVP, BLOCK_N=BLOCK_N, BIAS=BIAS, HAS_PREFIX=HAS_PREFIX, PV_INT8=PV_INT8, DOT=DOT, DS_DOT=DS_DOT,
            NEED_DS=need_ds, NEED_DB=NEED_DB, NEED_DK=NEED_DK, BIAS_GRAD=BIAS_GRAD, NEED_DA_COLS=NEED_DA_COLS,
            MASK_N=lo_hi == 1)
    out_rows = bh64 * M + cols
    if NEED_DV:
        if PV_INT8:
            dv_acc = tl.where(tl.abs(v_raw) <= 2.0, dv_acc, 0.0)  # straight-through window |v| <= 2
        dv_base = dv_ptr + b.to(tl.int64) * s_dvb + h.to(tl.int64) * s_dvh  # strided: (B, M, H, Dv) storage
        tl.store(dv_base + cols.to(tl.int64)[:, None] * s_dvm + dvr[None, :], dv_acc.to(dv_ptr.dtype.element_ty),
                 mask=col_mask[:, None] & (dvr < DV)[None, :])
    if NEED_DB:
        tl.store(db_ptr + out_rows, scale * db_acc, mask=col_mask)
    if NEED_DA_COLS:
        tl.store(da_cols_ptr + out_rows, scale * b_j * da_acc, mask=col_mask)
    if NEED_DK:
        clip = load_bits(kclip_ptr + bh64 * M * s_clip_m, cols, col_mask, s_clip_m, D=D, DP=DP)
        dk = dk_acc * clip * (scale * b_j)[:, None]
        d = tl.arange(0, DP)
        tl.store(dk_ptr + out_rows[:, None] * D + d[None, :], dk, mask=col_mask[:, None] & (d < D)[None, :])
