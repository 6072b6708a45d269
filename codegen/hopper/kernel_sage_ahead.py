"""Structure (a)'s static-maximum key loop with S issued one tile ahead of the softmax (``HopperConfig.qk_ahead``).

Why (``benchmarks/hopper_ablation.py``, H200, session 13, CUDA-graph GPU time at (1, 16, 16384, 64)): the
shipped loop takes 1.90 ms; without its exp2 1.80, without P.V 1.41, without Q.K^T 1.32. The float8 Q.K^T is
a quarter of the tensor work yet its removal saves the most: its latency is exposed. That loop issues
S_{j+1} and waits for it one P.V issue later, then computes tile j+1's softmax.

Here iteration ``j`` enters with the scores x_j = s_j c - m in registers and P.V_{j-1}, then S_{j+1}, in
flight, and:
    exp     p_j = exp2(x_j), l += rowsum p_j      (the MUFU block, both products in flight)
    store   bf16(p_j) into P slot j % 2 (shared memory; P.V_{j-2}, its last reader, retired)
    wait    all retired (P.V_{j-1}, S_{j+1})      (issued before the exp2 block: done by now, as a rule)
    refill  V slot of tile j-1 with tile j-1+STAGES, K slot of tile j+1 with tile j+1+STAGES
    issue   O += P_j . V_j                        (both operands in shared memory)
    scores  x_{j+1} (+ beta2, masks; the last tile's columns >= M by a uniform flag), P.V_j in flight
    issue   S_{j+2} = Q . K_{j+2}^T               (the last tile again when j+2 is past it: never read)
so S_{j+1}'s latency hides behind a whole exp2 block and P.V_j's behind the next scores and exp2. The back
edge sits between the issue of S_{j+2} and the exp2 of x_{j+1} on purpose: ptxas does not move instructions
across it. Forms read in SASS / ptxas notes (Triton 3.6) and dropped: P in registers (loop-carried) made
ptxas write tile j's probabilities into the registers of the in-flight P_{j-1}, so it waited for P.V_{j-1}
right after issuing S_{j+1}, before 22 of the 32 MUFU; S_{j+1} issued inside the iteration before the exp2:
ptxas hoisted 24 of the 32 MUFU above that issue; S retired by a partial wait (P.V_j left in flight) in the
iteration after its issue: C7514, every wgmma serialised (ptxas cannot pair the wait with an issue across
the back edge). P goes through shared memory because a register A operand cannot be double-buffered in a
loop. The running maximum keeps ``kernel_sage._attend``. Shared memory: + 2 x BLOCK_N x BLOCK_M x 2 bytes
(16 KB at 64 x 64).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                              warpgroup_mma_init, warpgroup_mma_wait)

from .kernel_sage import ONES_N, _exp_rows, _issue_qk, _load_k, _load_v, _static_scores
from .kernel_sage_rows import BIAS_DENSE, BIAS_MASK


@gluon.jit
def _issue_smem_pv(p_s, v_s, ones_s, v_bar, tile, o, lsum, STAGES: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """``O += P . V_tile`` (and ``lsum += P . 1``) async, P from its shared-memory slot ``tile % 2``."""
    slot = tile % STAGES
    mbarrier.wait(v_bar.index(slot), (tile // STAGES) & 1)
    p_slot = p_s.index(tile % 2)
    o = warpgroup_mma(p_slot, v_s.index(slot), o, is_async=True)
    if ROWSUM_MMA:
        lsum = warpgroup_mma(p_slot, ones_s.permute((1, 0)), lsum, is_async=True)
    return o, lsum


@gluon.jit
def _retire_all(o, s, lsum, ROWSUM_MMA: gl.constexpr):
    """Wait until no wgmma is in flight."""
    if ROWSUM_MMA:
        o, s, lsum = warpgroup_mma_wait(num_outstanding=0, deps=(o, s, lsum))
    else:
        o, s = warpgroup_mma_wait(num_outstanding=0, deps=(o, s))
    return o, s, lsum


@gluon.jit
def _retire_pv_only(o, lsum, ROWSUM_MMA: gl.constexpr):
    """Wait until no wgmma is in flight (O and lsum the only accumulators left)."""
    if ROWSUM_MMA:
        o, lsum = warpgroup_mma_wait(num_outstanding=0, deps=(o, lsum))
    else:
        o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
    return o, lsum


@gluon.jit
def _scores_and_next_qk(q_s, k_s, k_bar, s, j, n_tiles, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows,
                        row_mask, col_base, M, MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, EVEN_M: gl.constexpr,
                        BLOCK_M: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr):
    """From S_j retired in ``s``: ``(x_j, S_{j+1} in flight)``. Past the last tile, S of the last tile is issued
    again (its K slot is never refilled, its barrier phase done): a result nobody reads."""
    x = _static_scores(s, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, j * BLOCK_M + col_base, M,
                       j + 1 == n_tiles, MEAN_ABS, BIAS, EVEN_M)
    s = _issue_qk(q_s, k_s, k_bar, gl.minimum(j + 1, n_tiles - 1), s, NKC, STAGES)
    return x, s


@gluon.jit
def _step_ahead(q_s, k_s, v_s, p_s, ones_s, k_bar, v_bar, k_desc, v_desc, j, n_tiles, x, s, o, lsum, m_i, l_i, c,
                c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h, M, MEAN_ABS: gl.constexpr,
                BIAS: gl.constexpr, EVEN_M: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr,
                NKC: gl.constexpr, STAGES: gl.constexpr, POLY_EVERY: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """Iteration ``j < n_tiles - 1`` (see the module notation)."""
    clamp: gl.constexpr = BIAS == BIAS_DENSE or BIAS == BIAS_MASK  # tile j < last: x <= P_OFFSET, no -inf otherwise
    pf, l_i = _exp_rows(x, l_i, POLY_EVERY, clamp, ROWSUM_MMA)
    p_s.index(j % 2).store(pf.to(p_s.dtype))
    fence_async_shared()
    # a full wait: ptxas pairs it with the issues (a partial one here serialises every wgmma)
    o, s, lsum = _retire_all(o, s, lsum, ROWSUM_MMA)
    _load_v(v_desc, v_s, v_bar, b, h, j - 1 + STAGES, (j > 0) & (j - 1 + STAGES < n_tiles), BLOCK_M, STAGES)
    _load_k(k_desc, k_s, k_bar, bh, j + 1 + STAGES, j + 1 + STAGES < n_tiles, BLOCK_M, KC, NKC, STAGES)
    o, lsum = _issue_smem_pv(p_s, v_s, ones_s, v_bar, j, o, lsum, STAGES, ROWSUM_MMA)
    x, s = _scores_and_next_qk(q_s, k_s, k_bar, s, j + 1, n_tiles, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows,
                               row_mask, col_base, M, MEAN_ABS, BIAS, EVEN_M, BLOCK_M, NKC, STAGES)
    return x, s, o, lsum, l_i


@gluon.jit
def _attend_ahead(q_s, k_s, v_s, ones_s, k_bar, v_bar, k_desc, v_desc, m_i, c, c_rows, b_ptr, bias_base, s_bn,
                  s_bm, rows, row_mask, bh, b, h, M, MEAN_ABS: gl.constexpr, BIAS: gl.constexpr,
                  EVEN_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr,
                  NKC: gl.constexpr, DVP: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
                  o_layout: gl.constexpr, POLY_EVERY: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """All key tiles under the static maximum ``m_i``: ``(o, l, m)`` as ``kernel_sage._attend``."""
    l_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[BLOCK_N // 16, 1],
                                                       instr_shape=[16, ONES_N, 16])
    p_s = gl.allocate_shared_memory(v_desc.dtype, [2, BLOCK_N, BLOCK_M],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], v_desc.dtype))
    n_tiles = gl.cdiv(M, BLOCK_M)
    col_base = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    l_i = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, s_layout))
    s = _issue_qk(q_s, k_s, k_bar, 0, gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout), NKC, STAGES)
    o = warpgroup_mma_init(gl.zeros([BLOCK_N, DVP], gl.float32, o_layout))  # loop-carried as an async result
    lsum = l_i  # unused without ROWSUM_MMA
    if ROWSUM_MMA:
        lsum = warpgroup_mma_init(gl.zeros([BLOCK_N, ONES_N], gl.float32, l_layout))
    # the zeroed accumulators pass through this wait so they are defined before S_1 is issued: zeros
    # materialised while a wgmma is in flight (where the compiler otherwise sinks them) serialise every wgmma
    # of the kernel (C7515)
    o, s, lsum = _retire_all(o, s, lsum, ROWSUM_MMA)
    o = warpgroup_mma_init(o)
    if ROWSUM_MMA:
        lsum = warpgroup_mma_init(lsum)
    _load_k(k_desc, k_s, k_bar, bh, STAGES, STAGES < n_tiles, BLOCK_M, KC, NKC, STAGES)
    x, s = _scores_and_next_qk(q_s, k_s, k_bar, s, 0, n_tiles, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows,
                               row_mask, col_base, M, MEAN_ABS, BIAS, EVEN_M, BLOCK_M, NKC, STAGES)
    for j in range(n_tiles - 1):
        x, s, o, lsum, l_i = _step_ahead(
            q_s, k_s, v_s, p_s, ones_s, k_bar, v_bar, k_desc, v_desc, j, n_tiles, x, s, o, lsum, m_i, l_i, c, c_rows,
            b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h, M, MEAN_ABS, BIAS, EVEN_M, BLOCK_M, KC,
            NKC, STAGES, POLY_EVERY, ROWSUM_MMA)
    clamp: gl.constexpr = not EVEN_M or BIAS == BIAS_DENSE or BIAS == BIAS_MASK
    pf, l_i = _exp_rows(x, l_i, POLY_EVERY, clamp, ROWSUM_MMA)
    last = n_tiles - 1
    p_s.index(last % 2).store(pf.to(p_s.dtype))  # through shared memory too: a register P here (in S's
    fence_async_shared()  # registers, by ptxas' choice) serialised every wgmma of the kernel (C7515)
    o, s, lsum = _retire_all(o, s, lsum, ROWSUM_MMA)  # the unread S and P.V_{last-1}
    # the unread S read once (integer sums, finite: + 0 exactly), before the next issue: otherwise its registers
    # are dead from its issue on, ptxas writes the last exp2 into them while it is in flight and serialises
    # every wgmma (C7515)
    unread = gl.sum(s, axis=1) * 0.0
    o, lsum = _issue_smem_pv(p_s, v_s, ones_s, v_bar, last, o, lsum, STAGES, ROWSUM_MMA)
    o_done, lsum = _retire_pv_only(o, lsum, ROWSUM_MMA)
    if ROWSUM_MMA:
        l_i = gl.convert_layout(gl.max(lsum, axis=1), gl.SliceLayout(1, s_layout))  # the ONES_N columns are equal
    return o_done, l_i + unread, m_i
