"""Structure (a) as a persistent kernel: one program per resident CTA slot walks many (query tile, batch*head) items.

``kernel_sage``'s key loop (``_attend``) per work item; what changes is what happens between items. Program ``pid``
of ``n_prog`` takes items ``pid, pid + n_prog, ...`` (item ``i``: query tile ``i % n_qt`` of batch*head
``i // n_qt``, so the programs resident at one time share a few heads' K and V in L2). Its K-sign / V ring is one
stream over all its items' key tiles: the loads issued while an item finishes are the next item's first tiles
(``kernel_sage._tile_at``), and the next item's Q signs load into the second Q buffer while this item runs. The
one-CTA-per-item kernel waits for Q and its first K / V tiles at every start instead (at N 256, four key tiles
per item, that wait is about as long as the item's work).

Shared memory: ``kernel_sage``'s ring plus a second Q buffer (4 KB at 64 rows, D <= 64). Barriers: ``q_bar[2]``
(item ``k`` of the program uses buffer ``k % 2``, phase ``(k // 2) & 1``), the ring's ``k_bar`` / ``v_bar`` by
stream position. The launcher (``launcher.persistent_grid``) launches as many programs as fit on the GPU at once,
at most one per item.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from .kernel_sage import _attend_bounded, _load_k, _load_vs, _ones_operand, _tile_at
from .kernel_sage_rows import _row_scalars, _store, _store_tail


@gluon.jit
def _load_q(q_desc, q_s, q_bar, buf, bh, pid_n, pred):
    """TMA of query tile ``pid_n`` of ``bh`` (one box of the sign operand) into Q buffer ``buf`` where ``pred``."""
    BLOCK_N: gl.constexpr = q_desc.block_type.shape[1]
    bar = q_bar.index(buf)
    mbarrier.expect(bar, q_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(q_desc, [bh, pid_n * BLOCK_N, 0], bar,
                                    q_s.index(buf).reshape(q_desc.block_type.shape), pred=pred)


@gluon.jit
def _binary_attn_fwd_sm90_persistent_kernel(
    q_desc, k_desc, v_desc, vt_desc, out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr,
    bias_ptr, beta_max_ptr, s_bias_b, s_bias_h, s_bn, s_bm, H, N, M, scale_log2, inv_nd, inv_md, n_items, n_qt,
    D: gl.constexpr, DV: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr, MEAN_ABS: gl.constexpr,
    BIAS: gl.constexpr, BETA_MAX: gl.constexpr, STATIC_MAX: gl.constexpr, LIMIT: gl.constexpr,
    P_OFFSET: gl.constexpr, PEEL: gl.constexpr, EVEN_M: gl.constexpr, POLY_EVERY: gl.constexpr,
    ROWSUM_MMA: gl.constexpr, DVT: gl.constexpr, num_warps: gl.constexpr,
):
    """``kernel_sage._binary_attn_fwd_sm90_kernel``'s arguments plus ``n_items`` (query tiles of every batch*head)
    and ``n_qt`` (query tiles per batch*head); a 1-D grid of at most ``n_items`` programs."""
    BLOCK_N: gl.constexpr = q_desc.block_type.shape[1]
    KC: gl.constexpr = q_desc.block_type.shape[2]
    BLOCK_M: gl.constexpr = k_desc.block_type.shape[1]
    DVP: gl.constexpr = v_desc.block_type.shape[3]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, DVP, 16])
    ot_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, max(DVT, 8), 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    pid = gl.program_id(0)
    n_prog = gl.num_programs(0)
    n_tiles = gl.cdiv(M, BLOCK_M)

    gl.static_assert(NKC == 1, "the persistent kernel takes the sign operand as one TMA box (forward_sign_box)")
    q_s = gl.allocate_shared_memory(q_desc.dtype, [2, BLOCK_N, KC],  # _issue_qk reads buffer q_buf
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_N, KC], q_desc.dtype))
    k_s = gl.allocate_shared_memory(k_desc.dtype, [STAGES * NKC, BLOCK_M, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, KC], k_desc.dtype))
    v_s = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_M, DVP],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVP], v_desc.dtype))
    vt_s = v_s  # unused without a value tail
    if DVT > 0:
        vt_s = gl.allocate_shared_memory(vt_desc.dtype, [STAGES, BLOCK_M, DVT],
                                         gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVT], vt_desc.dtype))
    q_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bar.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(i), count=1)
        mbarrier.init(v_bar.index(i), count=1)

    bh = pid // n_qt
    b = bh // H
    h = bh % H
    nxt = pid + n_prog
    nxt_bh = nxt // n_qt
    _load_q(q_desc, q_s, q_bar, 0, bh, pid % n_qt, True)
    for t in gl.static_range(STAGES):  # stream positions [0, STAGES): the first item's (n_tiles >= STAGES)
        kbh, kb, kh, ktile, ok = _tile_at(t, n_tiles, bh, b, h, nxt_bh, nxt_bh // H, nxt_bh % H, nxt < n_items, True)
        _load_k(k_desc, k_s, k_bar, kbh, t, ktile, ok, BLOCK_M, KC, NKC, STAGES)
        _load_vs(v_desc, vt_desc, v_s, vt_s, v_bar, kb, kh, t, ktile, ok, BLOCK_M, STAGES, DVT)
    ones_s = _ones_operand(v_s, ROWSUM_MMA, BLOCK_M, num_warps)

    for k in range(gl.cdiv(n_items - pid, n_prog)):
        item = pid + k * n_prog
        bh = item // n_qt
        pid_n = item % n_qt
        b = bh // H
        h = bh % H
        nxt = item + n_prog
        nxt_bh = nxt // n_qt
        _load_q(q_desc, q_s, q_bar, (k + 1) % 2, nxt_bh, nxt % n_qt, nxt < n_items)
        rows, row_mask, c, c_rows, bound, row_shift, bias_base, b_rows_ptr = _row_scalars(
            a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr, beta_max_ptr, s_bias_b, s_bias_h, bh, b, h,
            pid_n, n_qt, N, M, scale_log2, inv_nd, inv_md, D, MEAN_ABS, BIAS, BETA_MAX, BLOCK_N, row_layout, num_warps)
        mbarrier.wait(q_bar.index(k % 2), (k // 2) & 1)
        o, ot, l_i, m_i = _attend_bounded(q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, bound,
                                          c, c_rows, b_rows_ptr, bias_base, s_bn, s_bm, rows, row_mask, bh, b, h, M,
                                          k * n_tiles, k % 2, nxt_bh, nxt_bh // H, nxt_bh % H, nxt < n_items,
                                          MEAN_ABS, BIAS,
                                          STATIC_MAX, LIMIT, P_OFFSET, EVEN_M, BLOCK_N, BLOCK_M, KC, NKC, DVP, DVT,
                                          STAGES, PEEL, s_layout, o_layout, ot_layout, POLY_EVERY, ROWSUM_MMA, True)
        out_base = out_ptr + (b.to(gl.int64) * N * H + h) * DV  # (B, N, H, DV) storage, as kernel_sage
        _store(out_base, H * DV, lse_ptr, state_ptr, o, l_i, m_i, row_shift, bh.to(gl.int64) * N, rows, row_mask,
               pid_n * BLOCK_N, N, DV, BLOCK_N, DVP, o_layout)
        _store_tail(out_base, H * DV, ot, l_i, pid_n * BLOCK_N, N, DV, BLOCK_N, DVP, DVT, ot_layout)

    for i in gl.static_range(2):
        mbarrier.invalidate(q_bar.index(i))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bar.index(i))
        mbarrier.invalidate(v_bar.index(i))
