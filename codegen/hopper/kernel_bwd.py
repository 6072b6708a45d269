"""Hopper (sm_90) binary-attention backward in Gluon, key side (every mode): a CTA per 64 or 128 keys.

Checked on the H200 (Triton 3.6) against the float64 reference by ``tests/codegen/test_gpu_hopper_bwd.py`` (127
cases, session 7); speed in ``benchmarks/kernel_notes.md`` (session 8: 64 keys x 32 queries is the table's
tile). Compiled for sm_90 with Triton 3.6 by ``benchmarks/hopper_build.py`` (registers and spills printed there).

Notation (SPEC §4; the tl.dot backward's, ``codegen/backward_kernels.py``): tiles are held transposed, keys
x queries (rows j, columns i). ``h_ij = <sgn q_i, sgn k_j>``; ``c_ij = (a_i scale log2 e) b_j``;
``s2_ij = h_ij c_ij + beta2_ij``; ``p_ij = exp2((s2_ij - m2_i) - l2_i)`` with the forward's row state
(``m2`` less a head bias's shift, ``l2 = log2 l``, each at least -FLT_MAX, as ``backward_kernels._row_state``);
``delta_i = dO_i . O_i`` (``backward._row_dots``, from the forward's output), ``dp_ij = dO_i . V_j``,
``dS_ij = p_ij (dp_ij - delta_i)``. Per key tile the kernel forms

    dV_j      = sum_i p_ij dO_i                  (bf16/fp16 wgmma, P from registers)
    db_j      = scale sum_i dS_ij h_ij a_i       (NEED_DB: per-key row sums)
    dac_j     = scale b_j sum_i dS_ij h_ij       (NEED_DA_COLS: sum_j dac_j = sum_i da_i, the mean_abs chain)
    da_i     += scale sum_j dS_ij h_ij b_j       (NEED_DA_ROWS: one float32 atomic add per query per key tile)
    dsk_j     = sum_i dS_ij                      (HEAD_DBIAS: the launcher sums them per head)
    dbeta_ij += dS_ij                            (DENSE_DBIAS: atomics into a float32 buffer of the bias's shape,
                                                  stride 0 on its broadcast dims; a table bias goes through a
                                                  dense (1, H, N, N) buffer)
    dk_raw_j  = sum_i bf16(dS_ij a_i) sgn q_i    (NEED_DK, ste: bf16 wgmma, P-style register A operand; the
                                                  launcher applies scale b_j and k's clip bits; dq's sign term
                                                  is ``kernel_bwd_q``'s)

Sign operands: float8 e4m3 +-1.0 (hamming, stopgrad) or bf16 +-1.0 (ste: the same Q tile is the B operand of
S^T and of dK, so S^T is a bf16 product there; both exact).

Parallelisation: program ``(pid_m, bh)`` owns keys ``[pid_m * BLOCK_M, +BLOCK_M)`` of batch*head ``bh`` and
walks every query tile. The key-side results (dV, db, dac, dsk) stay in registers and are stored once; the
only query-side reduction, ``da_i`` (token weighting), is an atomic add per query row per key tile
(``M / BLOCK_M`` adds per row, none for mean_abs/none weighting); no second pass over the scores.

Partitions: none (no warp specialisation). ``num_warps = BLOCK_M // 16``: one warpgroup per 64 keys; the
same warps issue the TMA loads (one elected thread), the three wgmma and the elementwise work. Several
CTAs share an SM.

Shared memory (STAGES 2, bf16; 36 KB at D = Dv = 64 with 128 keys x 32 queries, 48 KB at 128 with 64 x 32):
    k_s   [NKC, BLOCK_M, KC]           float8 K signs (+-1.0), loaded once           8 KB  (128 x 64)
    v_s   [1, BLOCK_M, DVP]            V tile (A operand of dP^T), loaded once       16 KB
    q_s   [STAGES * NKC, BLOCK_N, KC]  float8 Q-sign tiles (K-major B operand)       2 x 2 KB (32 x 64)
    do_s  [STAGES, BLOCK_N, DVP]       dO tiles (B operand of dP^T and of dV)        2 x 4 KB
    r_s   [STAGES, 4, BLOCK_N]         float32 m2, l2, delta, a (``staged_rows``)    2 x 512 B
    kv_bar [1], qd_bar [STAGES]        mbarriers (expect-tx; one per slot for q and dO together)
Query tile t lives in slot ``t % STAGES``, barrier phase ``(t // STAGES) & 1``. Its readers are S_t, dP_t
and dV_t; iteration t+1 refills the slot (tile t + STAGES) right after the wait that retires dV_t.
TMA zero-fills rows past N / M and channels past D / Dv.

Per query tile t (wgmma groups in issue order; ``warpgroup_mma_wait(n)`` leaves the n newest in flight):
    issue  S_t^T = K . Q_t^T        float8 e4m3, NKC groups (integer sums of +-1.0 < 2**8: exact float32)
    issue  dP_t^T = V . dO_t^T      bf16/fp16 (only when a dS reduction is needed)
    wait(1)                          retires dV_{t-1} and S_t; dP_t stays in flight
    refill slot of tile t-1 with tile t-1+STAGES
    probs  p = exp2((h c + beta2 - m2) - l2)  on the MUFU while dP_t runs on the tensor cores
    issue  dV += bf16(p) . dO_t     P from registers (DotOperandLayout A operand)
    wait(1)                          retires dP_t; dV_t stays in flight
    dS     dS = p (dP - delta) and its reductions on the FMA/ALU units while dV_t runs

Registers (per thread): S, dP, p, dS at BLOCK_N/2 float32 each, P BLOCK_N/4, dV DVP/2 float32, each
per-query vector (m2, l2, delta, a) BLOCK_N/4. ptxas (Triton 3.6, sm_90, no spills): 120 at D = Dv = 64
(128 x 32, mean_abs; 156 with token weighting and a head bias), 154 at 128 (64 x 32; 196);
``benchmarks/hopper_build.py`` prints them per variant. SASS of the D 64 loop: 2 QGMMA, 4 + 2 HGMMA,
16 MUFU.EX2, ~110 FP32 instructions per thread per 128 x 32 tile (no wgmma serialisation note).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_init, warpgroup_mma_wait)

LOG2E = gl.constexpr(1.4426950408889634)  # 1 / ln(2)
FLT_MAX = gl.constexpr(3.4028234663852886e38)  # torch.finfo(torch.float32).max
TINY = gl.constexpr(5.421010862427522e-20)  # 2**-64: beta * TINY - FLT_MAX is -FLT_MAX for finite beta (tiles.TINY)
BIAS_NONE = gl.constexpr(0)
BIAS_HEAD = gl.constexpr(1)
BIAS_DENSE = gl.constexpr(3)  # also the table bias, materialised densely by the launcher
BIAS_MASK = gl.constexpr(4)
ROW_FIELDS = gl.constexpr(4)  # staged per-query rows: m2, l2, delta, a (``launcher.staged_query_rows``)


@gluon.jit
def _load_queries(q_desc, do_desc, rows_desc, q_s, do_s, r_s, qd_bar, bh, b, h, tile, pred, BLOCK_N: gl.constexpr,
                  KC: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr, STAGED_ROWS: gl.constexpr):
    """TMA of query tile ``tile`` (NKC sign chunks and the dO rows; with ``STAGED_ROWS`` also its ``ROW_FIELDS``
    per-query rows, one ``[ROW_FIELDS, BLOCK_N]`` box of ``rows_desc``) into slot ``tile % STAGES`` where ``pred``."""
    slot = tile % STAGES
    bar = qd_bar.index(slot)
    rows_bytes: gl.constexpr = rows_desc.block_type.nbytes if STAGED_ROWS else 0
    mbarrier.expect(bar, NKC * q_desc.block_type.nbytes + do_desc.block_type.nbytes + rows_bytes, pred=pred)
    for c in gl.static_range(NKC):
        tma.async_copy_global_to_shared(q_desc, [bh, tile * BLOCK_N, c * KC], bar,
                                        q_s.index(slot * NKC + c).reshape(q_desc.block_type.shape), pred=pred)
    tma.async_copy_global_to_shared(do_desc, [b, h, tile * BLOCK_N, 0], bar,
                                    do_s.index(slot).reshape(do_desc.block_type.shape), pred=pred)
    if STAGED_ROWS:
        tma.async_copy_global_to_shared(rows_desc, [bh * ROW_FIELDS, tile * BLOCK_N], bar, r_s.index(slot), pred=pred)


@gluon.jit
def _staged_rows(r_s, slot, NEED_DS: gl.constexpr, MEAN_ABS: gl.constexpr, layout: gl.constexpr):
    """``(m2, l2, a, delta)`` of the tile in ``slot`` from the staged rows (``launcher.staged_query_rows``: the
    clamps of ``_query_rows`` applied, m2 = +inf past N). The slot's ``[ROW_FIELDS, BLOCK_N]`` tile is unswizzled
    (row-major): read as one vector of ``ROW_FIELDS * BLOCK_N`` and sliced per field."""
    BLOCK_N: gl.constexpr = r_s.shape[2]
    flat = r_s.index(slot)._reinterpret(gl.float32, [ROW_FIELDS * BLOCK_N],
                                        gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1))
    m2 = flat.slice(0, BLOCK_N).load(layout)
    l2 = flat.slice(BLOCK_N, BLOCK_N).load(layout)
    delta = l2  # unused unless NEED_DS
    if NEED_DS:
        delta = flat.slice(2 * BLOCK_N, BLOCK_N).load(layout)
    a_q = l2  # unused for mean_abs
    if not MEAN_ABS:
        a_q = flat.slice(3 * BLOCK_N, BLOCK_N).load(layout)
    return m2, l2, a_q, delta


@gluon.jit
def _query_rows(state_ptr, delta_ptr, a_ptr, row0, qrows, q_mask, head_shift2, NEED_DS: gl.constexpr,
                MEAN_ABS: gl.constexpr):
    """``(m2, l2, a, delta)`` of the tile's queries: rows past N read ``m2 = +inf`` (``p = 0``), the rest
    ``max(m2 - head shift, -FLT_MAX)`` and ``max(l2, -FLT_MAX)``: a row without a kept key (``l2 = -inf``)
    gives ``exp2(-inf) = 0``, not NaN (``backward_kernels._row_state``). ``a`` is not read for mean_abs."""
    offs = row0 + qrows
    m2 = gl.load(state_ptr + 2 * offs, mask=q_mask, other=float("inf")) - head_shift2
    l2 = gl.load(state_ptr + 2 * offs + 1, mask=q_mask, other=0.0)
    a_q = l2  # unused for mean_abs
    if not MEAN_ABS:
        a_q = gl.load(a_ptr + offs, mask=q_mask, other=0.0)
    delta = l2  # unused unless NEED_DS
    if NEED_DS:
        delta = gl.load(delta_ptr + offs, mask=q_mask, other=0.0)
    return gl.maximum(m2, -FLT_MAX), gl.maximum(l2, -FLT_MAX), a_q, delta


@gluon.jit
def _probs_t(h, b_keys, a_q, c_head, m2, l2, scale_log2, bias_base, s_bn, s_bm, keys, key_mask, qrows, q_mask,
             BIAS: gl.constexpr, EVEN_M: gl.constexpr, MEAN_ABS: gl.constexpr):
    """``p`` ``(BLOCK_M, BLOCK_N)`` (keys x queries) of the integer score tile ``h`` (float32).

    ``s2 = h * ((a_i scale log2 e) b_j)``, the tl.dot backward's rounding (``backward_kernels._probs``); for
    mean_abs every ``a_i`` and ``b_j`` of a head is the one head value (the forwards fill them so; a NaN in q
    makes the head's sum NaN), so ``c_head`` is that product bit for bit, one multiply per score fewer.
    Keys past M (zero-filled signs, not EVEN_M) are set to -inf so their p, dS vanish.
    """
    if MEAN_ABS:
        x = h * c_head
    else:
        x = h * ((a_q * scale_log2)[None, :] * b_keys[:, None])
    if BIAS == BIAS_DENSE:
        keep = key_mask[:, None] & q_mask[None, :]
        beta = gl.load(bias_base + qrows[None, :] * s_bn + keys[:, None] * s_bm, mask=keep, other=0.0)
        beta = beta.to(gl.float32)
        x = gl.maximum(x + beta * LOG2E, beta * TINY - FLT_MAX)  # tiles.add_dense_bias
    if BIAS == BIAS_MASK:
        keep = key_mask[:, None] & q_mask[None, :]
        allowed = gl.load(bias_base + qrows[None, :] * s_bn + keys[:, None] * s_bm, mask=keep, other=1)
        x = gl.where(allowed != 0, x, float("-inf"))
    if not EVEN_M:
        x = gl.where(key_mask[:, None], x, float("-inf"))
    return gl.exp2((x - m2[None, :]) - l2[None, :])


@gluon.jit
def _reduce(ds, h, a_q, b_keys, db_acc, dac_acc, dsk_acc, da_rows_ptr, gbias_base, s_gn, s_gm, row0, qrows,
            q_mask, keys, key_mask, scale, NEED_DB: gl.constexpr, NEED_DA_COLS: gl.constexpr,
            NEED_DA_ROWS: gl.constexpr, HEAD_DBIAS: gl.constexpr, DENSE_DBIAS: gl.constexpr,
            MEAN_ABS: gl.constexpr):
    """The dS reductions of one tile (module notation); returns the per-key accumulators.

    mean_abs: ``dac_acc`` holds ``X_j = sum_i dS_ij h_ij`` for db (``scale a X_j``) and dac alike."""
    dsh = ds * h
    if MEAN_ABS:
        if NEED_DB or NEED_DA_COLS:
            dac_acc += gl.sum(dsh, axis=1)
    else:
        if NEED_DB:
            db_acc += gl.sum(dsh * a_q[None, :], axis=1)
        if NEED_DA_COLS:
            dac_acc += gl.sum(dsh, axis=1)
    if NEED_DA_ROWS:
        part = gl.sum(dsh * b_keys[:, None], axis=0)  # (BLOCK_N,) this key tile's share of sum_j
        gl.atomic_add(da_rows_ptr + row0 + qrows, scale * part, mask=q_mask, sem="relaxed")  # no ordering needed
    if HEAD_DBIAS:
        dsk_acc += gl.sum(ds, axis=1)
    if DENSE_DBIAS:
        pair = key_mask[:, None] & q_mask[None, :]
        gl.atomic_add(gbias_base + qrows[None, :] * s_gn + keys[:, None] * s_gm, ds, mask=pair, sem="relaxed")
    return db_acc, dac_acc, dsk_acc


@gluon.jit
def _binary_attn_bwd_sm90_kernel(
    k_desc, q_desc, v_desc, do_desc, rows_desc, state_ptr, delta_ptr, a_ptr, b_ptr, bias_ptr, gbias_ptr,
    dv_ptr, db_ptr, da_cols_ptr, da_rows_ptr, ds_keys_ptr, dk_ptr,
    s_bias_b, s_bias_h, s_bn, s_bm, s_gb, s_gh, s_gn, s_gm, s_dvb, s_dvh, s_dvm, H, N, M, scale, scale_log2,
    D: gl.constexpr, DV: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr, BIAS: gl.constexpr,
    NEED_DV: gl.constexpr, NEED_DB: gl.constexpr, NEED_DA_COLS: gl.constexpr, NEED_DA_ROWS: gl.constexpr,
    HEAD_DBIAS: gl.constexpr, DENSE_DBIAS: gl.constexpr, EVEN_M: gl.constexpr, MEAN_ABS: gl.constexpr,
    NEED_DK: gl.constexpr, STAGED_ROWS: gl.constexpr, num_warps: gl.constexpr,
):
    """Binary attention backward, key side, of one (key tile, batch*head); see the module notation.
    ``STAGED_ROWS``: the per-query m2, l2, delta, a come through ``rows_desc`` with each query tile (TMA into
    shared memory) instead of global loads per tile; else ``rows_desc`` is unused."""
    BLOCK_M: gl.constexpr = k_desc.block_type.shape[1]
    KC: gl.constexpr = k_desc.block_type.shape[2]
    BLOCK_N: gl.constexpr = q_desc.block_type.shape[1]
    DVP: gl.constexpr = v_desc.block_type.shape[3]
    NEED_DS: gl.constexpr = NEED_DB or NEED_DA_COLS or NEED_DA_ROWS or HEAD_DBIAS or DENSE_DBIAS or NEED_DK
    SK: gl.constexpr = 32 if q_desc.dtype.is_fp8() else 16  # K of one wgmma: float8 signs, or bf16 (ste)
    t_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, SK])
    dp_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, BLOCK_N, 16])
    dv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, DVP, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dv_layout, k_width=2)
    dk_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, KC, 16])
    key_layout: gl.constexpr = gl.SliceLayout(1, t_layout)
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(gl.int64)
    scale = scale.to(gl.float32)
    scale_log2 = scale_log2.to(gl.float32)
    n_tiles = gl.cdiv(N, BLOCK_N)

    k_s = gl.allocate_shared_memory(k_desc.dtype, [NKC, BLOCK_M, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, KC], k_desc.dtype))
    v_s = gl.allocate_shared_memory(v_desc.dtype, [1, BLOCK_M, DVP],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVP], v_desc.dtype))
    q_s = gl.allocate_shared_memory(q_desc.dtype, [STAGES * NKC, BLOCK_N, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_N, KC], q_desc.dtype))
    do_s = gl.allocate_shared_memory(do_desc.dtype, [STAGES, BLOCK_N, DVP],
                                     gl.NVMMASharedLayout.get_default_for([BLOCK_N, DVP], do_desc.dtype))
    r_s = q_s  # unused unless STAGED_ROWS
    if STAGED_ROWS:
        r_s = gl.allocate_shared_memory(gl.float32, [STAGES, ROW_FIELDS, BLOCK_N], rows_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    qd_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar.index(0), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(qd_bar.index(i), count=1)

    mbarrier.expect(kv_bar.index(0), NKC * k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    for c in gl.static_range(NKC):
        tma.async_copy_global_to_shared(k_desc, [bh, pid_m * BLOCK_M, c * KC], kv_bar.index(0),
                                        k_s.index(c).reshape(k_desc.block_type.shape))
    tma.async_copy_global_to_shared(v_desc, [b, h, pid_m * BLOCK_M, 0], kv_bar.index(0),
                                    v_s.index(0).reshape(v_desc.block_type.shape))
    for t in gl.static_range(STAGES):
        _load_queries(q_desc, do_desc, rows_desc, q_s, do_s, r_s, qd_bar, bh, b, h, t, t < n_tiles, BLOCK_N, KC, NKC,
                      STAGES, STAGED_ROWS)

    keys = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=key_layout)
    key_mask = keys < M
    b_keys = gl.load(b_ptr + bh64 * M + keys, mask=key_mask, other=0.0)
    a_head = 0.0
    c_head = 0.0
    if MEAN_ABS:  # every row of a head holds the head's value
        a_head = gl.load(a_ptr + bh64 * N)
        c_head = (a_head * scale_log2) * gl.load(b_ptr + bh64 * M)
    head_shift2 = 0.0
    bias_base = bias_ptr
    gbias_base = gbias_ptr
    if BIAS == BIAS_HEAD:
        head_shift2 = gl.load(bias_ptr + h) * LOG2E  # a head bias only shifts the row
    if BIAS == BIAS_DENSE or BIAS == BIAS_MASK:
        bias_base = bias_ptr + b.to(gl.int64) * s_bias_b + h.to(gl.int64) * s_bias_h
    if DENSE_DBIAS:
        gbias_base = gbias_ptr + b.to(gl.int64) * s_gb + h.to(gl.int64) * s_gh
    mbarrier.wait(kv_bar.index(0), 0)

    dv, dk, db_acc, dac_acc, dsk_acc = _walk_queries(
        q_s, do_s, r_s, k_s, v_s, qd_bar, q_desc, do_desc, rows_desc, state_ptr, delta_ptr, a_ptr, da_rows_ptr,
        bias_base, gbias_base, s_bn, s_bm, s_gn, s_gm, bh, b, h, bh64 * N, N, n_tiles, keys, key_mask, b_keys,
        head_shift2, a_head, c_head, scale, scale_log2, BIAS, NEED_DS, NEED_DB, NEED_DA_COLS, NEED_DA_ROWS,
        HEAD_DBIAS, DENSE_DBIAS, EVEN_M, MEAN_ABS, NEED_DK, STAGED_ROWS, BLOCK_M, BLOCK_N, KC, NKC, DVP, STAGES,
        t_layout, dp_layout, dv_layout, p_layout, dk_layout)

    mbarrier.invalidate(kv_bar.index(0))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(qd_bar.index(i))
    out_keys = bh64 * M + keys
    if NEED_DB:
        if MEAN_ABS:
            db_acc = a_head * dac_acc  # scale a sum_i dS h
        gl.store(db_ptr + out_keys, scale * db_acc, mask=key_mask)
    if NEED_DA_COLS:
        gl.store(da_cols_ptr + out_keys, scale * b_keys * dac_acc, mask=key_mask)
    if HEAD_DBIAS:
        gl.store(ds_keys_ptr + out_keys, dsk_acc, mask=key_mask)
    if NEED_DV:
        v_rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dv_layout))
        v_cols = gl.arange(0, DVP, layout=gl.SliceLayout(0, dv_layout))
        dv_base = dv_ptr + b.to(gl.int64) * s_dvb + h.to(gl.int64) * s_dvh  # strided: (B, M, H, Dv) storage
        ptrs = dv_base + v_rows.to(gl.int64)[:, None] * s_dvm + v_cols[None, :]
        gl.store(ptrs, dv.to(dv_ptr.dtype.element_ty), mask=(v_rows < M)[:, None] & (v_cols < DV)[None, :])
    if NEED_DK:  # the raw sums sum_i dS_ij a_i sgn q_i; the launcher applies scale b_j and the clip bits
        k_rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, dk_layout))
        k_cols = gl.arange(0, KC, layout=gl.SliceLayout(0, dk_layout))
        gl.store(dk_ptr + (bh64 * M + k_rows)[:, None] * D + k_cols[None, :], dk,
                 mask=(k_rows < M)[:, None] & (k_cols < D)[None, :])


@gluon.jit
def _walk_queries(q_s, do_s, r_s, k_s, v_s, qd_bar, q_desc, do_desc, rows_desc, state_ptr, delta_ptr, a_ptr,
                  da_rows_ptr, bias_base, gbias_base, s_bn, s_bm, s_gn, s_gm, bh, b, h, row0, N, n_tiles, keys,
                  key_mask, b_keys, head_shift2, a_head, c_head, scale, scale_log2, BIAS: gl.constexpr,
                  NEED_DS: gl.constexpr, NEED_DB: gl.constexpr, NEED_DA_COLS: gl.constexpr, NEED_DA_ROWS: gl.constexpr,
                  HEAD_DBIAS: gl.constexpr, DENSE_DBIAS: gl.constexpr, EVEN_M: gl.constexpr, MEAN_ABS: gl.constexpr,
                  NEED_DK: gl.constexpr, STAGED_ROWS: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, KC: gl.constexpr, NKC: gl.constexpr,
                  DVP: gl.constexpr, STAGES: gl.constexpr, t_layout: gl.constexpr, dp_layout: gl.constexpr,
                  dv_layout: gl.constexpr, p_layout: gl.constexpr, dk_layout: gl.constexpr):
    """Every query tile of the program (module notation): ``(dV, dK, db_acc, dac_acc, dsk_acc)``, retired.

    ``NEED_DK`` (ste): ``dK += bf16(dS a) . Q_t`` issued as soon as dS is formed, before its reductions (after
    them, ptxas serialises the wgmma: C7513 with token weighting or a dense bias, offline); in flight with dV_t
    until the next iteration's first wait, which retires dV_{t-1}, dK_{t-1} and S_t."""
    dsa_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dk_layout, k_width=2)
    key_layout: gl.constexpr = gl.SliceLayout(1, t_layout)
    q_base = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, t_layout))
    db_acc = gl.zeros([BLOCK_M], gl.float32, key_layout)
    dac_acc = gl.zeros([BLOCK_M], gl.float32, key_layout)
    dsk_acc = gl.zeros([BLOCK_M], gl.float32, key_layout)
    p_op = gl.zeros([BLOCK_M, BLOCK_N], do_desc.dtype, p_layout)
    dv = warpgroup_mma_init(gl.zeros([BLOCK_M, DVP], gl.float32, dv_layout))  # loop-carried as an async result
    dk = dv  # unused unless NEED_DK
    dsa_op = p_op
    if NEED_DK:
        dk = warpgroup_mma_init(gl.zeros([BLOCK_M, KC], gl.float32, dk_layout))
        dsa_op = gl.zeros([BLOCK_M, BLOCK_N], do_desc.dtype, dsa_layout)
    # S and dP are loop-carried and re-enter every wgmma with use_acc=False. They enter the loop as wgmma
    # results (tile 0's products, discarded): entering as zeros, a non-wgmma definition of accumulator
    # registers, makes ptxas serialise every wgmma of the kernel (C7515; offline, Triton 3.6).
    mbarrier.wait(qd_bar.index(0), 0)
    s = warpgroup_mma(k_s.index(0), q_s.index(0).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, t_layout),
                      use_acc=False, is_async=True)
    dp = s  # unused unless NEED_DS
    if NEED_DS:
        dp = warpgroup_mma(v_s.index(0), do_s.index(0).permute((1, 0)),
                           gl.zeros([BLOCK_M, BLOCK_N], gl.float32, dp_layout), use_acc=False, is_async=True)
        s, dp = warpgroup_mma_wait(num_outstanding=0, deps=(s, dp))
    else:
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    for t in range(n_tiles):
        slot = t % STAGES
        qrows = t * BLOCK_N + q_base
        q_mask = qrows < N
        if not STAGED_ROWS:  # global loads, issued before the tile's barrier wait
            m2, l2, a_q, delta = _query_rows(state_ptr, delta_ptr, a_ptr, row0, qrows, q_mask, head_shift2, NEED_DS,
                                             MEAN_ABS)
        mbarrier.wait(qd_bar.index(slot), (t // STAGES) & 1)
        if STAGED_ROWS:  # arrived with the tile
            m2, l2, a_q, delta = _staged_rows(r_s, slot, NEED_DS, MEAN_ABS, gl.SliceLayout(0, t_layout))
        for c in gl.static_range(NKC):
            s = warpgroup_mma(k_s.index(c), q_s.index(slot * NKC + c).permute((1, 0)), s, use_acc=c > 0,
                              is_async=True)
        if NEED_DK:
            dp = warpgroup_mma(v_s.index(0), do_s.index(slot).permute((1, 0)), dp, use_acc=False, is_async=True)
            s, dv, p_op, dk, dsa_op = warpgroup_mma_wait(num_outstanding=1, deps=(s, dv, p_op, dk, dsa_op))
        elif NEED_DS:
            dp = warpgroup_mma(v_s.index(0), do_s.index(slot).permute((1, 0)), dp, use_acc=False, is_async=True)
            s, dv, p_op = warpgroup_mma_wait(num_outstanding=1, deps=(s, dv, p_op))  # dP_t stays in flight
        else:
            s, dv, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(s, dv, p_op))
        # S_{t-1}, dP_{t-1}, dV_{t-1} have retired: slot (t-1) % STAGES takes tile t-1+STAGES
        if STAGED_ROWS:  # its staged rows were read through the generic proxy (iteration t-1); TMA writes next
            fence_async_shared()
        _load_queries(q_desc, do_desc, rows_desc, q_s, do_s, r_s, qd_bar, bh, b, h, t - 1 + STAGES,
                      (t > 0) & (t - 1 + STAGES < n_tiles), BLOCK_N, KC, NKC, STAGES, STAGED_ROWS)
        p = _probs_t(s, b_keys, a_q, c_head, m2, l2, scale_log2, bias_base, s_bn, s_bm, keys, key_mask, qrows,
                     q_mask, BIAS, EVEN_M, MEAN_ABS)
        p_op = gl.convert_layout(p.to(do_desc.dtype), p_layout)
        dv = warpgroup_mma(p_op, do_s.index(slot), dv, is_async=True)
        if NEED_DS:
            dp = warpgroup_mma_wait(num_outstanding=1, deps=(dp,))  # retires dP_t; dV_t stays in flight
            ds = p * (gl.convert_layout(dp, t_layout) - delta[None, :])
            if NEED_DK:
                if MEAN_ABS:
                    dsa = ds * a_head
                else:
                    dsa = ds * a_q[None, :]
                dsa_op = gl.convert_layout(dsa.to(do_desc.dtype), dsa_layout)
                dk = warpgroup_mma(dsa_op, q_s.index(slot * NKC), dk, is_async=True)  # NKC == 1 under ste
            db_acc, dac_acc, dsk_acc = _reduce(ds, s, a_q, b_keys, db_acc, dac_acc, dsk_acc, da_rows_ptr, gbias_base,
                                               s_gn, s_gm, row0, qrows, q_mask, keys, key_mask, scale, NEED_DB,
                                               NEED_DA_COLS, NEED_DA_ROWS, HEAD_DBIAS, DENSE_DBIAS, MEAN_ABS)
    if NEED_DK:
        dv, p_op, dk, dsa_op = warpgroup_mma_wait(num_outstanding=0, deps=(dv, p_op, dk, dsa_op))
    else:
        dv, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(dv, p_op))
    return dv, dk, db_acc, dac_acc, dsk_acc
