"""Hopper (sm_90) binary-attention backward in Gluon, the query side of ``ste``: dQ's sign term per query tile.

Checked on the H200 (Triton 3.6) by ``tests/codegen/test_gpu_hopper_bwd.py`` (session 7). Compiled for
sm_90 with Triton 3.6 by ``benchmarks/hopper_build.py``. The key side (dV, dK, the scalar and bias
gradients) is ``kernel_bwd._binary_attn_bwd_sm90_kernel``; this kernel forms only

    dq_raw_i = sum_j dS_ij b_j sgn k_j        (the launcher applies scale a_i and q's clip bits)

with the notation of ``kernel_bwd`` (tiles here are queries x keys, rows i, columns j; ``delta_i`` and the row
state are per row, loaded once). Program ``(pid_n, bh)``: queries ``[pid_n * 64, +64)``, 4 warps (one
warpgroup), walking every key tile; no atomics.

Shared memory (bf16 signs, STAGES 2; 40 KB at D = Dv = 64 with 64 keys per tile, 80 KB at 128):
    q_s  [1, BLOCK_N, KC]   Q signs (+-1.0 bf16), loaded once          do_s [1, BLOCK_N, DVP]  dO, loaded once
    k_s  [STAGES, BLOCK_M, KC]  K-sign tiles (B operand of S, and of dQ)  v_s [STAGES, BLOCK_M, DVP]  V tiles
    q_bar [1], kv_bar [STAGES]
Per key tile t: issue S_t = Q . K_t^T and dP_t = dO . V_t^T; wait(1) (retires dQ_{t-1}, S_t); refill the slot
of tile t-1; p = exp2((h c + beta2 - m2) - l2) while dP_t runs; wait(0); dS = p (dP - delta);
issue dQ += bf16(dS b) . K_t (in flight until the next iteration's first wait).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, tma, warpgroup_mma, warpgroup_mma_init,
                                                              warpgroup_mma_wait)

from .kernel_bwd import BIAS_DENSE, BIAS_HEAD, BIAS_MASK, FLT_MAX, LOG2E, TINY


@gluon.jit
def _load_keys(k_desc, v_desc, k_s, v_s, kv_bar, bh, b, h, tile, pred, BLOCK_M: gl.constexpr,
               STAGES: gl.constexpr):
    """TMA of key tile ``tile`` (signs and V rows) into slot ``tile % STAGES`` where ``pred``."""
    slot = tile % STAGES
    bar = kv_bar.index(slot)
    mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(k_desc, [bh, tile * BLOCK_M, 0], bar,
                                    k_s.index(slot).reshape(k_desc.block_type.shape), pred=pred)
    tma.async_copy_global_to_shared(v_desc, [b, h, tile * BLOCK_M, 0], bar,
                                    v_s.index(slot).reshape(v_desc.block_type.shape), pred=pred)


@gluon.jit
def _probs_rows(h, c_rows, b_ptr, c_head, m2, l2, bias_base, s_bn, s_bm, rows, row_mask, cols, M,
                BIAS: gl.constexpr, EVEN_M: gl.constexpr, MEAN_ABS: gl.constexpr):
    """``(p, b_cols)`` of a score tile (queries x keys): ``kernel_bwd._probs_t`` untransposed."""
    col_mask = cols < M
    b_cols = gl.load(b_ptr + cols, mask=col_mask, other=0.0)
    if MEAN_ABS:
        x = h * c_head
    else:
        x = h * (c_rows[:, None] * b_cols[None, :])  # ((a_i scale log2 e) b_j), the tl.dot backward's rounding
    if BIAS == BIAS_DENSE:
        keep = row_mask[:, None] & col_mask[None, :]
        beta = gl.load(bias_base + rows[:, None] * s_bn + cols[None, :] * s_bm, mask=keep, other=0.0)
        beta = beta.to(gl.float32)
        x = gl.maximum(x + beta * LOG2E, beta * TINY - FLT_MAX)
    if BIAS == BIAS_MASK:
        keep = row_mask[:, None] & col_mask[None, :]
        allowed = gl.load(bias_base + rows[:, None] * s_bn + cols[None, :] * s_bm, mask=keep, other=1)
        x = gl.where(allowed != 0, x, float("-inf"))
    if not EVEN_M:
        x = gl.where(col_mask[None, :], x, float("-inf"))
    return gl.exp2((x - m2[:, None]) - l2[:, None]), b_cols


@gluon.jit
def _binary_attn_bwd_q_sm90_kernel(
    q_desc, k_desc, do_desc, v_desc, state_ptr, delta_ptr, a_ptr, b_ptr, bias_ptr, dq_ptr,
    s_bias_b, s_bias_h, s_bn, s_bm, H, N, M, scale_log2,
    D: gl.constexpr, STAGES: gl.constexpr, BIAS: gl.constexpr, EVEN_M: gl.constexpr, MEAN_ABS: gl.constexpr,
    num_warps: gl.constexpr,
):
    """dQ's sign term (ste) of one (query tile, batch*head); see the module notation."""
    BLOCK_N: gl.constexpr = q_desc.block_type.shape[1]
    KC: gl.constexpr = q_desc.block_type.shape[2]
    BLOCK_M: gl.constexpr = k_desc.block_type.shape[1]
    DVP: gl.constexpr = do_desc.block_type.shape[3]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, KC, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    pid_n = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(gl.int64)
    scale_log2 = scale_log2.to(gl.float32)
    n_tiles = gl.cdiv(M, BLOCK_M)

    q_s = gl.allocate_shared_memory(q_desc.dtype, [1, BLOCK_N, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_N, KC], q_desc.dtype))
    do_s = gl.allocate_shared_memory(do_desc.dtype, [1, BLOCK_N, DVP],
                                     gl.NVMMASharedLayout.get_default_for([BLOCK_N, DVP], do_desc.dtype))
    k_s = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_M, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, KC], k_desc.dtype))
    v_s = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_M, DVP],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVP], v_desc.dtype))
    q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar.index(0), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_bar.index(i), count=1)
    mbarrier.expect(q_bar.index(0), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [bh, pid_n * BLOCK_N, 0], q_bar.index(0),
                                    q_s.index(0).reshape(q_desc.block_type.shape))
    tma.async_copy_global_to_shared(do_desc, [b, h, pid_n * BLOCK_N, 0], q_bar.index(0),
                                    do_s.index(0).reshape(do_desc.block_type.shape))
    for t in gl.static_range(STAGES):
        _load_keys(k_desc, v_desc, k_s, v_s, kv_bar, bh, b, h, t, t < n_tiles, BLOCK_M, STAGES)

    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=row_layout)
    row_mask = rows < N
    offs = bh64 * N + rows
    head_shift2 = 0.0
    bias_base = bias_ptr
    if BIAS == BIAS_HEAD:
        head_shift2 = gl.load(bias_ptr + h) * LOG2E
    if BIAS == BIAS_DENSE or BIAS == BIAS_MASK:
        bias_base = bias_ptr + b.to(gl.int64) * s_bias_b + h.to(gl.int64) * s_bias_h
    m2 = gl.maximum(gl.load(state_ptr + 2 * offs, mask=row_mask, other=float("inf")) - head_shift2, -FLT_MAX)
    l2 = gl.maximum(gl.load(state_ptr + 2 * offs + 1, mask=row_mask, other=0.0), -FLT_MAX)
    delta = gl.load(delta_ptr + offs, mask=row_mask, other=0.0)
    c_rows = gl.load(a_ptr + offs, mask=row_mask, other=0.0) * scale_log2
    c_head = 0.0
    if MEAN_ABS:
        c_head = (gl.load(a_ptr + bh64 * N) * scale_log2) * gl.load(b_ptr + bh64 * M)
    mbarrier.wait(q_bar.index(0), 0)

    dq = _walk_keys(q_s, do_s, k_s, v_s, kv_bar, k_desc, v_desc, b_ptr + bh64 * M, bias_base, s_bn, s_bm, bh, b,
                    h, M, n_tiles, rows, row_mask, m2, l2, delta, c_rows, c_head, BIAS, EVEN_M, MEAN_ABS, BLOCK_N,
                    BLOCK_M, KC, DVP, STAGES, s_layout, dq_layout)
    mbarrier.invalidate(q_bar.index(0))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(kv_bar.index(i))
    q_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, dq_layout))
    q_cols = gl.arange(0, KC, layout=gl.SliceLayout(0, dq_layout))
    gl.store(dq_ptr + (bh64 * N + q_rows)[:, None] * D + q_cols[None, :], dq,
             mask=(q_rows < N)[:, None] & (q_cols < D)[None, :])


@gluon.jit
def _walk_keys(q_s, do_s, k_s, v_s, kv_bar, k_desc, v_desc, b_rows_ptr, bias_base, s_bn, s_bm, bh, b, h, M,
               n_tiles, rows, row_mask, m2, l2, delta, c_rows, c_head, BIAS: gl.constexpr, EVEN_M: gl.constexpr,
               MEAN_ABS: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr,
               DVP: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr, dq_layout: gl.constexpr):
    """Every key tile of the program (module notation): the retired ``dq_raw`` accumulator."""
    ds_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dq_layout, k_width=2)
    col_base = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    dq = warpgroup_mma_init(gl.zeros([BLOCK_N, KC], gl.float32, dq_layout))
    ds_op = gl.zeros([BLOCK_N, BLOCK_M], k_desc.dtype, ds_layout)
    # S and dP enter the loop as wgmma results (tile 0's, discarded), as in kernel_bwd (ptxas C7515 otherwise)
    mbarrier.wait(kv_bar.index(0), 0)
    s = warpgroup_mma(q_s.index(0), k_s.index(0).permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout),
                      use_acc=False, is_async=True)
    dp = warpgroup_mma(do_s.index(0), v_s.index(0).permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout),
                       use_acc=False, is_async=True)
    s, dp = warpgroup_mma_wait(num_outstanding=0, deps=(s, dp))
    for t in range(n_tiles):
        slot = t % STAGES
        mbarrier.wait(kv_bar.index(slot), (t // STAGES) & 1)
        s = warpgroup_mma(q_s.index(0), k_s.index(slot).permute((1, 0)), s, use_acc=False, is_async=True)
        dp = warpgroup_mma(do_s.index(0), v_s.index(slot).permute((1, 0)), dp, use_acc=False, is_async=True)
        s, dq, ds_op = warpgroup_mma_wait(num_outstanding=1, deps=(s, dq, ds_op))  # dP_t stays in flight
        # S_{t-1}, dP_{t-1}, dQ_{t-1} have retired: slot (t-1) % STAGES takes tile t-1+STAGES
        _load_keys(k_desc, v_desc, k_s, v_s, kv_bar, bh, b, h, t - 1 + STAGES, (t > 0) & (t - 1 + STAGES < n_tiles),
                   BLOCK_M, STAGES)
        p, b_cols = _probs_rows(s, c_rows, b_rows_ptr, c_head, m2, l2, bias_base, s_bn, s_bm, rows, row_mask,
                                t * BLOCK_M + col_base, M, BIAS, EVEN_M, MEAN_ABS)
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
        ds = p * (dp - delta[:, None])
        ds_op = gl.convert_layout((ds * b_cols[None, :]).to(k_desc.dtype), ds_layout)
        dq = warpgroup_mma(ds_op, k_s.index(slot), dq, is_async=True)
    dq, ds_op = warpgroup_mma_wait(num_outstanding=0, deps=(dq, ds_op))
    return dq
