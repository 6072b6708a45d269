"""Hopper (sm_90) binary-attention forward in Gluon, structure (b): a producer warp and NC consumer warpgroups.

Warp specialisation (``gl.warp_specialize``, Triton 3.6): the CTA owns ``NC * 64`` query rows of one
(batch, head); consumer warpgroup ``i`` (the default partition is consumer 0) owns rows
``[(pid_n * NC + i) * 64, +64)``; one producer warp issues every TMA load. Consumers share each K-sign
and V tile (loaded once per CTA, not once per 64 rows as in structure (a)).

Ping-pong (FlashAttention-3's schedule): a consumer issues its two wgmma groups of an iteration only in
its turn (``turn`` mbarriers, consumer i hands the turn to i + 1 mod NC right after issuing), then runs
its softmax while the next consumer's products run on the tensor cores. Per key tile j (j >= 1):
    wait turn; issue S_j = Q . K_j^T (float8); issue O += bf16(p_{j-1}) . V_{j-1}; hand the turn on
    wait S_j (P.V_{j-1} in flight); release K slot; p_j = exp2(s2 - m) (``kernel_sage._probs``)
    wait P.V_{j-1}; release V slot
Every consumer takes ``n_tiles + 1`` turns (tile 0's S alone, the last P.V alone), so the turns stay
in step. Ring: ``STAGES`` K and V slots with full barriers (TMA completes them) and empty barriers
(each consumer arrives once: count NC). Gluon lowers an arrive inside a partition to a partition-wide
barrier plus one elected arrive, so one arrive per consumer is one count.

Row maximum, weighting, bias, masks and the epilogue are ``kernel_sage``'s (``_probs``, ``_row_scalars``,
``_store``): outputs are identical in form. The static maximum or the running maximum is chosen per
consumer (the guard is per row block); both loops take the same turns.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from .kernel_sage import ONES_N, _issue_pv, _load_k, _load_v, _ones_operand, _probs, _retire_pv
from .kernel_sage_rows import NEG_INIT, _row_scalars, _store

CONSUMER_WARPS = gl.constexpr(4)
PRODUCER_REGS = gl.constexpr(24)  # setmaxnreg of the producer warp(group): TMA issue only


@gluon.jit
def _take_turn(turn, k, CONSUMER: gl.constexpr, NC: gl.constexpr):
    """Wait for this consumer's ``k``-th turn (consumer 0's first passes: parity 1 of a fresh barrier);
    NC 0 (``PINGPONG`` off): no turns."""
    if NC > 1:
        mbarrier.wait(turn.index(CONSUMER), (k + (CONSUMER == 0)) & 1)


@gluon.jit
def _pass_turn(turn, CONSUMER: gl.constexpr, NC: gl.constexpr):
    """Hand the turn to the next consumer (NC 0: no turns)."""
    if NC > 1:
        mbarrier.arrive(turn.index((CONSUMER + 1) % NC))


@gluon.jit
def _issue_qk(q_s, k_s, k_bar, tile, s_acc, CONSUMER: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr):
    """Wait for K tile ``tile``, issue ``S = Q . K^T`` (this consumer's Q chunks) as NKC async float8 groups."""
    slot = tile % STAGES
    mbarrier.wait(k_bar.index(slot), (tile // STAGES) & 1)
    for c in gl.static_range(NKC):
        s_acc = warpgroup_mma(q_s.index(CONSUMER * NKC + c), k_s.index(slot * NKC + c).permute((1, 0)), s_acc,
                              use_acc=c > 0, is_async=True)
    return s_acc


@gluon.jit
def _consume(q_s, k_s, v_s, ones_s, k_bar, v_bar, k_empty, v_empty, turn, m_i, c, c_rows, b_ptr, bias_base, s_bn,
             s_bm, rows, row_mask, M, MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, ONLINE: gl.constexpr,
             EVEN_M: gl.constexpr, CONSUMER: gl.constexpr, TURNS: gl.constexpr, BLOCK_N: gl.constexpr,
             BLOCK_M: gl.constexpr, NKC: gl.constexpr, DVP: gl.constexpr, STAGES: gl.constexpr,
             ROWSUM_MMA: gl.constexpr, POLY_EVERY: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr):
    """All key tiles of one consumer: ``(o, l, m)``, ``o = sum_j p_ij V_j`` unnormalised (module schedule).
    ``ROWSUM_MMA``: l accumulated as ``P . 1`` beside each P.V (``kernel_sage``'s option)."""
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    l_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1],
                                                       instr_shape=[16, ONES_N, 16])
    n_tiles = gl.cdiv(M, BLOCK_M)
    col_base = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    l_i = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, s_layout))
    _take_turn(turn, 0, CONSUMER, TURNS)
    s = _issue_qk(q_s, k_s, k_bar, 0, gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout), CONSUMER, NKC, STAGES)
    _pass_turn(turn, CONSUMER, TURNS)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    mbarrier.arrive(k_empty.index(0))
    pf, m_i, l_i, alpha = _probs(s, m_i, l_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base,
                                 M, n_tiles == 1, MEAN_ABS, BIAS, ONLINE, EVEN_M, POLY_EVERY, ROWSUM_MMA)
    o = gl.zeros([BLOCK_N, DVP], gl.float32, o_layout)  # retired at every loop edge
    lsum = l_i  # unused without ROWSUM_MMA
    if ROWSUM_MMA:
        lsum = gl.zeros([BLOCK_N, ONES_N], gl.float32, l_layout)
    for j in range(1, n_tiles):
        _take_turn(turn, j, CONSUMER, TURNS)
        s = _issue_qk(q_s, k_s, k_bar, j, s, CONSUMER, NKC, STAGES)
        o, lsum, p = _issue_pv(v_s, ones_s, v_bar, j - 1, o, lsum, pf, alpha, STAGES, ONLINE, o_layout, p_layout,
                               l_layout, ROWSUM_MMA)
        _pass_turn(turn, CONSUMER, TURNS)
        s = warpgroup_mma_wait(num_outstanding=2 if ROWSUM_MMA else 1, deps=(s,))  # P.V_{j-1} in flight
        mbarrier.arrive(k_empty.index(j % STAGES))
        pf, m_i, l_i, alpha = _probs(s, m_i, l_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask,
                                     j * BLOCK_M + col_base, M, j + 1 == n_tiles, MEAN_ABS, BIAS, ONLINE, EVEN_M,
                                     POLY_EVERY, ROWSUM_MMA)
        o, p, lsum = _retire_pv(o, p, lsum, 0, ROWSUM_MMA)
        mbarrier.arrive(v_empty.index((j - 1) % STAGES))
    _take_turn(turn, n_tiles, CONSUMER, TURNS)
    o, lsum, p = _issue_pv(v_s, ones_s, v_bar, n_tiles - 1, o, lsum, pf, alpha, STAGES, ONLINE, o_layout, p_layout,
                           l_layout, ROWSUM_MMA)
    _pass_turn(turn, CONSUMER, TURNS)
    o, p, lsum = _retire_pv(o, p, lsum, 0, ROWSUM_MMA)
    mbarrier.arrive(v_empty.index((n_tiles - 1) % STAGES))
    if ROWSUM_MMA:
        l_i = gl.convert_layout(gl.max(lsum, axis=1), gl.SliceLayout(1, s_layout))  # the ONES_N columns are equal
    return o, l_i, m_i


@gluon.jit
def _consumer(smem, ptrs, D: gl.constexpr, DV: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr,
              MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, BETA_MAX: gl.constexpr, LIMIT: gl.constexpr,
              P_OFFSET: gl.constexpr, EVEN_M: gl.constexpr, CONSUMER: gl.constexpr, NC: gl.constexpr,
              PINGPONG: gl.constexpr, ROWSUM_MMA: gl.constexpr, POLY_EVERY: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_M: gl.constexpr, DVP: gl.constexpr):
    """One consumer warpgroup: its 64 query rows, row scalars to epilogue. ``smem``: the kernel's shared
    buffers and barriers; ``ptrs``: its pointer and scalar arguments (tuples of runtime values: a
    constexpr inside a tuple arrives as a runtime value)."""
    q_s, k_s, v_s, ones_s, q_bar, k_bar, v_bar, k_empty, v_empty, turn = smem
    (out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr, beta_max_ptr, s_bias_b,
     s_bias_h, s_bn, s_bm, H, N, M, scale_log2, inv_nd, inv_md, static_ok) = ptrs
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1],
                                                       instr_shape=[16, BLOCK_M, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[CONSUMER_WARPS, 1],
                                                       instr_shape=[16, DVP, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    prog = gl.program_id(0) * NC + CONSUMER
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    rows, row_mask, c, c_rows, bound, row_shift, bias_base, b_rows_ptr = _row_scalars(
        a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr, beta_max_ptr, s_bias_b, s_bias_h, bh, b, h, prog,
        gl.num_programs(0) * NC, N, M, scale_log2, inv_nd, inv_md, D, MEAN_ABS, BIAS, BETA_MAX, BLOCK_N, row_layout,
        CONSUMER_WARPS)
    mbarrier.wait(q_bar.index(CONSUMER), 0)
    online_m = gl.full([BLOCK_N], NEG_INIT, gl.float32, row_layout)
    # static_ok is a runtime flag: with the static loop compiled out, Triton 3.6 fails to lower the running-
    # maximum loop alone inside a partition (dense bias; SmallVector assertion in ConvertTritonGPUToLLVM)
    if (gl.max(bound, axis=0) * 2.0 <= LIMIT) & (static_ok != 0):
        o, l_i, m_i = _consume(q_s, k_s, v_s, ones_s, k_bar, v_bar, k_empty, v_empty, turn, bound - P_OFFSET, c, c_rows,
                               b_rows_ptr, bias_base, s_bn, s_bm, rows, row_mask, M, MEAN_ABS, BIAS, False, EVEN_M,
                               CONSUMER, NC if PINGPONG else 0, BLOCK_N, BLOCK_M, NKC, DVP, STAGES, ROWSUM_MMA,
                               POLY_EVERY, s_layout, o_layout)
    else:
        o, l_i, m_i = _consume(q_s, k_s, v_s, ones_s, k_bar, v_bar, k_empty, v_empty, turn, online_m, c, c_rows,
                               b_rows_ptr, bias_base, s_bn, s_bm, rows, row_mask, M, MEAN_ABS, BIAS, True, EVEN_M,
                               CONSUMER, NC if PINGPONG else 0, BLOCK_N, BLOCK_M, NKC, DVP, STAGES, ROWSUM_MMA,
                               POLY_EVERY, s_layout, o_layout)
    _store(out_ptr + (b.to(gl.int64) * N * H + h) * DV, H * DV, lse_ptr, state_ptr, o, l_i, m_i, row_shift,
           bh.to(gl.int64) * N, rows, row_mask, prog * BLOCK_N, N, DV, BLOCK_N, DVP, o_layout)


@gluon.jit
def _producer(q_desc, k_desc, v_desc, smem, H, M, NKC: gl.constexpr, STAGES: gl.constexpr, NC: gl.constexpr,
              BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr):
    """The TMA warp: every consumer's Q-sign tile, then K-sign and V tiles as ring slots empty."""
    q_s, k_s, v_s, ones_s, q_bar, k_bar, v_bar, k_empty, v_empty, turn = smem
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    for i in gl.static_range(NC):
        mbarrier.expect(q_bar.index(i), NKC * q_desc.block_type.nbytes)
        for c in gl.static_range(NKC):
            tma.async_copy_global_to_shared(q_desc, [bh, (gl.program_id(0) * NC + i) * BLOCK_N, c * KC],
                                            q_bar.index(i), q_s.index(i * NKC + c).reshape(q_desc.block_type.shape))
    for t in range(gl.cdiv(M, BLOCK_M)):
        free = ((t // STAGES) & 1) ^ 1  # a fresh slot's wait for parity 1 passes at once
        mbarrier.wait(k_empty.index(t % STAGES), free)
        _load_k(k_desc, k_s, k_bar, bh, t, True, BLOCK_M, KC, NKC, STAGES)
        mbarrier.wait(v_empty.index(t % STAGES), free)
        _load_v(v_desc, v_s, v_bar, b, h, t, True, BLOCK_M, STAGES)


@gluon.jit
def _binary_attn_fwd_sm90_ws_kernel(
    q_desc, k_desc, v_desc, out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr,
    beta_max_ptr, s_bias_b, s_bias_h, s_bn, s_bm, H, N, M, scale_log2, inv_nd, inv_md, static_ok,
    D: gl.constexpr, DV: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr, MEAN_ABS: gl.constexpr,
    BIAS: gl.constexpr, BETA_MAX: gl.constexpr, LIMIT: gl.constexpr,
    P_OFFSET: gl.constexpr, EVEN_M: gl.constexpr, NC: gl.constexpr, PINGPONG: gl.constexpr,
    ROWSUM_MMA: gl.constexpr, POLY_EVERY: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Binary attention forward of NC query tiles of one (batch, head); see the module notation."""
    BLOCK_N: gl.constexpr = q_desc.block_type.shape[1]
    KC: gl.constexpr = q_desc.block_type.shape[2]
    BLOCK_M: gl.constexpr = k_desc.block_type.shape[1]
    DVP: gl.constexpr = v_desc.block_type.shape[3]
    q_s = gl.allocate_shared_memory(q_desc.dtype, [NC * NKC, BLOCK_N, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_N, KC], q_desc.dtype))
    k_s = gl.allocate_shared_memory(k_desc.dtype, [STAGES * NKC, BLOCK_M, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, KC], k_desc.dtype))
    v_s = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_M, DVP],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVP], v_desc.dtype))
    q_bar = gl.allocate_shared_memory(gl.int64, [NC, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [NC, 1], mbarrier.MBarrierLayout())
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    ones_s = _ones_operand(v_s, ROWSUM_MMA, BLOCK_M, num_warps)  # written before the partitions start
    for i in gl.static_range(NC):
        mbarrier.init(q_bar.index(i), count=1)
        mbarrier.init(turn.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(i), count=1)
        mbarrier.init(v_bar.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=NC)
        mbarrier.init(v_empty.index(i), count=NC)

    smem = (q_s, k_s, v_s, ones_s, q_bar, k_bar, v_bar, k_empty, v_empty, turn)
    ptrs = (out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr, beta_max_ptr,
            s_bias_b, s_bias_h, s_bn, s_bm, H, N, M, scale_log2, inv_nd, inv_md, static_ok)
    if NC == 1:
        gl.warp_specialize([
            (_consumer, (smem, ptrs, D, DV, NKC, STAGES, MEAN_ABS, BIAS, BETA_MAX, LIMIT, P_OFFSET, EVEN_M,
                         0, NC, PINGPONG, ROWSUM_MMA, POLY_EVERY, BLOCK_N, BLOCK_M,
                         DVP)),
            (_producer, (q_desc, k_desc, v_desc, smem, H, M, NKC, STAGES, NC, BLOCK_N, BLOCK_M, KC)),
        ], [1], [PRODUCER_REGS])
    elif NC == 2:
        gl.warp_specialize([
            (_consumer, (smem, ptrs, D, DV, NKC, STAGES, MEAN_ABS, BIAS, BETA_MAX, LIMIT, P_OFFSET, EVEN_M,
                         0, NC, PINGPONG, ROWSUM_MMA, POLY_EVERY, BLOCK_N, BLOCK_M,
                         DVP)),
            (_consumer, (smem, ptrs, D, DV, NKC, STAGES, MEAN_ABS, BIAS, BETA_MAX, LIMIT, P_OFFSET, EVEN_M,
                         1, NC, PINGPONG, ROWSUM_MMA, POLY_EVERY, BLOCK_N, BLOCK_M,
                         DVP)),
            (_producer, (q_desc, k_desc, v_desc, smem, H, M, NKC, STAGES, NC, BLOCK_N, BLOCK_M, KC)),
        ], [CONSUMER_WARPS, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (smem, ptrs, D, DV, NKC, STAGES, MEAN_ABS, BIAS, BETA_MAX, LIMIT, P_OFFSET, EVEN_M,
                         0, NC, PINGPONG, ROWSUM_MMA, POLY_EVERY, BLOCK_N, BLOCK_M,
                         DVP)),
            (_consumer, (smem, ptrs, D, DV, NKC, STAGES, MEAN_ABS, BIAS, BETA_MAX, LIMIT, P_OFFSET, EVEN_M,
                         1, NC, PINGPONG, ROWSUM_MMA, POLY_EVERY, BLOCK_N, BLOCK_M,
                         DVP)),
            (_consumer, (smem, ptrs, D, DV, NKC, STAGES, MEAN_ABS, BIAS, BETA_MAX, LIMIT, P_OFFSET, EVEN_M,
                         2, NC, PINGPONG, ROWSUM_MMA, POLY_EVERY, BLOCK_N, BLOCK_M,
                         DVP)),
            (_producer, (q_desc, k_desc, v_desc, smem, H, M, NKC, STAGES, NC, BLOCK_N, BLOCK_M, KC)),
        ], [CONSUMER_WARPS, CONSUMER_WARPS, 1], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])
    for i in gl.static_range(NC):
        mbarrier.invalidate(q_bar.index(i))
        mbarrier.invalidate(turn.index(i))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bar.index(i))
        mbarrier.invalidate(v_bar.index(i))
        mbarrier.invalidate(k_empty.index(i))
        mbarrier.invalidate(v_empty.index(i))
