"""``qk_ahead == 2``: ``kernel_sage_ahead``'s schedule with P in registers (structure (a), static maximum).

Iteration ``j`` enters with the scores x_j in registers and P.V_{j-1}, then S_{j+1}, in flight, and:
    exp     p_j = exp2(x_j), l += rowsum p_j      (the MUFU block, both products in flight)
    pin     l stored to a shared scratch row, then a proxy fence
    wait    all retired (P.V_{j-1}, S_{j+1})
    refill  V slot of tile j-1 with tile j-1+STAGES, K slot of tile j+1 with tile j+1+STAGES
    issue   O += bf16(p_j) . V_j                  (P a register A operand)
    scores  x_{j+1}, P.V_j in flight
    issue   S_{j+2}                               (the last tile again when j+2 is past it: never read)
The back edge separates the S issue from the exp2 block, so ptxas cannot hoist the MUFU above it. The pin is
what keeps the wait after the exp2 block: ptxas puts a wgmma wait right after the latest commit and sinks
register-only work (and a global store, and a bare fence) below it (kernel_notes.md, session 13), but keeps it
after a proxy fence that follows shared stores fed by every probability. ptxas (Triton 3.6, sm_90a) at D 64:
127 registers (4 CTAs per SM), 29 KB shared, no notes; the loop's SASS is 32 MUFU, 2 STS, the fence, one
`DEPBAR.LE gsb0, 0x0`, 16 F2FP, 4 HGMMA, the scores, 2 QGMMA. Unmeasured on a GPU. ``mma_rowsum`` is not covered.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                              warpgroup_mma_init, warpgroup_mma_wait)

from .exp2_mix import exp2
from .kernel_sage import _issue_qk, _load_k, _load_v, _static_scores
from .kernel_sage_rows import BIAS_DENSE, BIAS_MASK


@gluon.jit
def _pv_rounded(v_s, v_bar, tile, o, pf, p_layout: gl.constexpr, STAGES: gl.constexpr):
    """Round P to V's type (the register A operand) and issue ``O += P . V_tile`` async."""
    p = gl.convert_layout(pf.to(v_s.dtype), p_layout)
    slot = tile % STAGES
    mbarrier.wait(v_bar.index(slot), (tile // STAGES) & 1)
    o = warpgroup_mma(p, v_s.index(slot), o, is_async=True)
    return o, p


@gluon.jit
def _scores_next(q_s, k_s, k_bar, s, j, n_tiles, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask,
                 col_base, M, MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, EVEN_M: gl.constexpr, BLOCK_M: gl.constexpr,
                 NKC: gl.constexpr, STAGES: gl.constexpr):
    """x_j from S_j (retired), then S_{j+1} issued (the last tile again past the end: its K slot is never
    refilled, its barrier phase done)."""
    x = _static_scores(s, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, j * BLOCK_M + col_base, M,
                       j + 1 == n_tiles, MEAN_ABS, BIAS, EVEN_M)
    s = _issue_qk(q_s, k_s, k_bar, gl.minimum(j + 1, n_tiles - 1), s, NKC, STAGES)
    return x, s


@gluon.jit
def _step_regs(q_s, k_s, v_s, l_s, k_bar, v_bar, k_desc, v_desc, j, n_tiles, x, s, o, p, m_i, l_i, c, c_rows, b_ptr,
               bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h, M, MEAN_ABS: gl.constexpr,
               BIAS: gl.constexpr, EVEN_M: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr, NKC: gl.constexpr,
               STAGES: gl.constexpr, p_layout: gl.constexpr, POLY_EVERY: gl.constexpr):
    """Iteration ``j < n_tiles - 1`` (see the module notation)."""
    clamp: gl.constexpr = BIAS == BIAS_DENSE or BIAS == BIAS_MASK  # tile j < last: x <= P_OFFSET, no -inf otherwise
    pf = exp2(x, POLY_EVERY, clamp)
    l_i = l_i + gl.sum(pf, axis=1)
    l_s.index(j % 2).store(l_i)  # a shared store fed by every probability, then a proxy fence: the wait stays after
    fence_async_shared()
    o, s, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, s, p))  # P.V_{j-1}, S_{j+1}
    _load_v(v_desc, v_s, v_bar, b, h, j - 1 + STAGES, (j > 0) & (j - 1 + STAGES < n_tiles), BLOCK_M, STAGES)
    _load_k(k_desc, k_s, k_bar, bh, j + 1 + STAGES, j + 1 + STAGES < n_tiles, BLOCK_M, KC, NKC, STAGES)
    o, p = _pv_rounded(v_s, v_bar, j, o, pf, p_layout, STAGES)
    x, s = _scores_next(q_s, k_s, k_bar, s, j + 1, n_tiles, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows,
                        row_mask, col_base, M, MEAN_ABS, BIAS, EVEN_M, BLOCK_M, NKC, STAGES)
    return x, s, o, p, l_i


@gluon.jit
def _attend_ahead_registers(q_s, k_s, v_s, ones_s, k_bar, v_bar, k_desc, v_desc, m_i, c, c_rows, b_ptr, bias_base,
                            s_bn, s_bm, rows, row_mask, bh, b, h, M, MEAN_ABS: gl.constexpr, BIAS: gl.constexpr,
                            EVEN_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr,
                            NKC: gl.constexpr, DVP: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
                            o_layout: gl.constexpr, POLY_EVERY: gl.constexpr):
    """All key tiles under the static maximum ``m_i``: ``(o, l, m)`` as ``kernel_sage._attend``."""
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    l_s = gl.allocate_shared_memory(gl.float32, [2, BLOCK_N], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    n_tiles = gl.cdiv(M, BLOCK_M)
    col_base = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    l_i = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, s_layout))
    s = _issue_qk(q_s, k_s, k_bar, 0, gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout), NKC, STAGES)
    p = gl.zeros([BLOCK_N, BLOCK_M], v_desc.dtype, p_layout)
    o = warpgroup_mma_init(gl.zeros([BLOCK_N, DVP], gl.float32, o_layout))
    o, s, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, s, p))  # the zeros defined before S_1's issue
    o = warpgroup_mma_init(o)
    _load_k(k_desc, k_s, k_bar, bh, STAGES, STAGES < n_tiles, BLOCK_M, KC, NKC, STAGES)
    x, s = _scores_next(q_s, k_s, k_bar, s, 0, n_tiles, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask,
                        col_base, M, MEAN_ABS, BIAS, EVEN_M, BLOCK_M, NKC, STAGES)
    for j in range(n_tiles - 1):
        x, s, o, p, l_i = _step_regs(q_s, k_s, v_s, l_s, k_bar, v_bar, k_desc, v_desc, j, n_tiles, x, s, o, p, m_i,
                                     l_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h,
                                     M, MEAN_ABS, BIAS, EVEN_M, BLOCK_M, KC, NKC, STAGES, p_layout, POLY_EVERY)
    clamp: gl.constexpr = not EVEN_M or BIAS == BIAS_DENSE or BIAS == BIAS_MASK
    pf = exp2(x, POLY_EVERY, clamp)
    o, s, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, s, p))  # the unread S, P.V_{last-1}
    unread = gl.sum(s, axis=1) * 0.0  # the unread S read once (see kernel_sage_ahead)
    o, p = _pv_rounded(v_s, v_bar, n_tiles - 1, o, pf, p_layout, STAGES)
    l_i = l_i + gl.sum(pf, axis=1)
    o, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, p))
    return o, l_i + unread, m_i
