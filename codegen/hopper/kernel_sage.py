"""Hopper (sm_90) binary-attention forward in Gluon, structure (a): one warpgroup per 64 query rows.

Checked on the H200 (Triton 3.6) against the float64 reference by ``tests/codegen/test_gpu_hopper.py``
(50 cases, integer scores bit for bit); speed in ``benchmarks/kernel_notes.md`` (session 6).

Partitions: none (no warp specialisation). ``num_warps = BLOCK_N // 16``: 4 warps (one warpgroup) own
a 64-row query tile, 8 warps (two warpgroups) a 128-row tile; the same warps issue the TMA loads
(one elected thread), the float8 and the bf16/fp16 wgmma and the softmax. Several CTAs share an SM.
Run on compute capability 9.x when ``KernelOptions(forward="hopper")`` asks and the plan accepts the call.
Program ``(pid_n, bh)``: query rows ``[pid_n * BLOCK_N, +BLOCK_N)`` of batch*head ``bh``.

Shared-memory ring (bytes for BLOCK_N 64, BLOCK_M 64, D = Dv = 64, STAGES 2, bf16; 28.8 KB in all):
    q_s   [NKC, BLOCK_N, KC]          float8 Q signs (+-1.0), loaded once       4 KB
    k_s   [STAGES * NKC, BLOCK_M, KC]  float8 K-sign tiles (K-major B operand)  2 x 4 KB
    v_s   [STAGES, BLOCK_M, DVP]       V tiles (MN-major B operand)             2 x 8 KB
    vt_s  [STAGES, BLOCK_M, DVT]       V channels [DVP, DVP + DVT) where 64 < Dv <= 96 (``config.value_split``:
                                       Dv 72 as 64 + 16, a second accumulator, not one 128-wide P.V)
    q_bar [1], k_bar [STAGES], v_bar [STAGES]  mbarriers (expect-tx, TMA completes them)
Tile t of K/V lives in slot ``t % STAGES``; its barrier phase is ``(t // STAGES) & 1``. No "empty"
barriers: the issuing warps refill a slot right after the wgmma wait that retired its last reader.
TMA descriptors: signs ``(B*H, L, DP)`` with boxes ``[1, BLOCK, KC]``, v ``(B, H, M, Dv)`` over its
own strides with box ``[1, 1, BLOCK_M, DVP]``: rows past L and channels past Dv read as zero per head.

Per key tile (``h`` float32 integers from the float8 wgmma, scores in log2 units); iteration j enters with the
float32 probabilities of tile j in registers and the P.V of tile j-1 in flight:
    issue   S_{j+1} = Q . K_{j+1}^T          (float8 e4m3 async wgmma, NKC chunks of KC channels)
    wait    P.V_{j-1} retired                 (``warpgroup_mma_wait(NKC)``; S_{j+1} stays in flight)
    refill  V slot of tile j-1 with tile j-1+STAGES (TMA)
    issue   O += bf16(p_j) . V_j             (P from registers, DotOperandLayout A operand, async)
    wait    S_{j+1} retired                   (``warpgroup_mma_wait(1)``; P.V_j stays in flight)
    refill  K slot of tile j+1 with tile j+1+STAGES
    probs   f = h (integer sums of +-1.0 below 2**8: exact in the float32 accumulator)
            x = f * c - m (mean_abs; c = scale a b log2 e per (b, h))  or  (f * b_j) * c_i - m_i
            x += beta2 (dense tile, or the table gathered per score) / x = -inf where the mask is False;
            p = exp2(x); l += rowsum p
``ROWSUM_MMA`` (``HopperConfig.mma_rowsum``): l is not summed per tile (32 FADD + 4 SHFL per thread at
BLOCK_M 64) but accumulated on the tensor cores as ``lsum += bf16(p_j) . 1`` (a ``(BLOCK_M, 8)`` ones
tile in shared memory, one more async wgmma group beside each P.V): 211 -> 176 instructions per tile
at D 64, 127 registers (ptxas, Triton 3.6).
so tile j+1's exp2 runs on the MUFU while P.V_j runs on the tensor cores (SASS, sm_90, ptxas of
Triton 3.6: 8 back-to-back HGMMA, then ``WARPGROUP.DEPBAR.LE gsb0, 0x1``, then the MUFU.EX2 block).
Row maximum: static ``m_i = bound_i - P_OFFSET`` with ``bound_i = |c_i| max|b| D + max|beta2|``
(SPEC §6; ``forward_tiles``' guard) where ``2 max(bound) <= LIMIT``; otherwise the same loop with the
running maximum (``ONLINE``: O rescaled after a full wait). The last tile alone masks columns ``>= M``
(a uniform flag, which ptxas if-converts into an FSEL per score on every tile; none when ``EVEN_M``,
M a multiple of BLOCK_M; ``PEEL`` moves the last step out of the loop instead).

Registers (ptxas, per thread, 4 warps, BLOCK_N 64, bf16, static + online loops in one kernel): S
BLOCK_M/2 float32, float32 probabilities BLOCK_M/2, P BLOCK_M/4, O DVP/2 float32. At BLOCK_M 64:
123 (D 64, float8 QK; 4 CTAs per SM), 163 (D 128; 3 CTAs); at BLOCK_M 128, D 64: 219 (2 CTAs, int8
QK); PEEL: 157 at D 64 (int8 QK); no spills.
``benchmarks/hopper_build.py`` prints them per variant. Row scalars and the epilogue: ``kernel_sage_rows``.
S issued one tile ahead of the softmax (P through shared memory, or in registers with the row sums pinned
behind a shared store) was built and measured 2-15 % slower (sessions 13-14, ``benchmarks/kernel_notes.md``;
the kernels are in git history at 92f0945, ``kernel_sage_ahead*.py``).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_init, warpgroup_mma_wait)

from .exp2_mix import exp2
from .kernel_sage_rows import (BIAS_DENSE, BIAS_MASK, BIAS_TABLE, LOG2E, NEG_INIT, TINY, _row_scalars, _store,
                               _store_tail)

ONES_N = gl.constexpr(8)  # width of the ones operand of ROWSUM_MMA (the smallest wgmma N)

@gluon.jit
def _load_k(k_desc, k_s, k_bar, bh, tile, pred, BLOCK_M: gl.constexpr, KC: gl.constexpr, NKC: gl.constexpr,
            STAGES: gl.constexpr):
    """TMA of K-sign tile ``tile`` (NKC chunks of KC channels) into slot ``tile % STAGES`` where ``pred``."""
    slot = tile % STAGES
    bar = k_bar.index(slot)
    mbarrier.expect(bar, NKC * k_desc.block_type.nbytes, pred=pred)
    for c in gl.static_range(NKC):
        tma.async_copy_global_to_shared(k_desc, [bh, tile * BLOCK_M, c * KC], bar,
                                        k_s.index(slot * NKC + c).reshape(k_desc.block_type.shape), pred=pred)


@gluon.jit
def _load_v(v_desc, v_s, v_bar, b, h, tile, pred, BLOCK_M: gl.constexpr, STAGES: gl.constexpr):
    """TMA of V tile ``tile`` (rows past M and channels past Dv zero-filled) into its slot where ``pred``."""
    slot = tile % STAGES
    bar = v_bar.index(slot)
    mbarrier.expect(bar, v_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(v_desc, [b, h, tile * BLOCK_M, 0], bar,
                                    v_s.index(slot).reshape(v_desc.block_type.shape), pred=pred)


@gluon.jit
def _load_vs(v_desc, vt_desc, v_s, vt_s, v_bar, b, h, tile, pred, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
             DVT: gl.constexpr):
    """``_load_v``; with a value tail (``DVT`` > 0) also channels ``[DVP, DVP + DVT)`` into ``vt_s``, on the same
    barrier (one expect for both boxes: a second expect would arrive twice)."""
    if DVT == 0:
        _load_v(v_desc, v_s, v_bar, b, h, tile, pred, BLOCK_M, STAGES)
    else:
        slot = tile % STAGES
        bar = v_bar.index(slot)
        mbarrier.expect(bar, v_desc.block_type.nbytes + vt_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(v_desc, [b, h, tile * BLOCK_M, 0], bar,
                                        v_s.index(slot).reshape(v_desc.block_type.shape), pred=pred)
        tma.async_copy_global_to_shared(vt_desc, [b, h, tile * BLOCK_M, v_desc.block_type.shape[3]], bar,
                                        vt_s.index(slot).reshape(vt_desc.block_type.shape), pred=pred)


@gluon.jit
def _issue_qk(q_s, k_s, k_bar, tile, s_acc, NKC: gl.constexpr, STAGES: gl.constexpr):
    """Wait for K tile ``tile`` and issue ``S = Q . K^T`` as NKC async float8 wgmma groups into ``s_acc``."""
    slot = tile % STAGES
    mbarrier.wait(k_bar.index(slot), (tile // STAGES) & 1)
    for c in gl.static_range(NKC):
        s_acc = warpgroup_mma(q_s.index(c), k_s.index(slot * NKC + c).permute((1, 0)), s_acc,
                              use_acc=c > 0, is_async=True)
    return s_acc


@gluon.jit
def _mask_scores(x, bias_base, s_bn, s_bm, rows, row_mask, cols, M, is_last, BIAS: gl.constexpr,
                 EVEN_M: gl.constexpr):
    """-inf where the boolean mask is False (BIAS_MASK) and, on the last tile, past column ``M``
    (never when ``EVEN_M``: M is a multiple of BLOCK_M)."""
    if BIAS == BIAS_MASK:
        keep = row_mask[:, None] & (cols < M)[None, :]
        allowed = gl.load(bias_base + rows[:, None] * s_bn + cols[None, :] * s_bm, mask=keep, other=1)
        x = gl.where(allowed != 0, x, float("-inf"))
    if not EVEN_M:
        if is_last:
            x = gl.where((cols < M)[None, :], x, float("-inf"))
    return x


@gluon.jit
def _scaled(h, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, cols, M, MEAN_ABS: gl.constexpr,
            BIAS: gl.constexpr):
    """``(f, scale, shift)`` of one score tile ``h`` (float32 integers): log2 score = f * scale + shift."""
    f = h  # float32 integer scores from the float8 +-1 product (exact)
    if MEAN_ABS:
        scale = gl.zeros_like(f) + c
    else:
        bj = gl.load(b_ptr + cols, mask=cols < M, other=0.0)
        f = f * bj[None, :]
        scale = gl.zeros_like(f) + c_rows[:, None]
    shift = 0.0  # beta2 (log2 units) of the tile
    if BIAS == BIAS_DENSE:
        keep = row_mask[:, None] & (cols < M)[None, :]
        beta = gl.load(bias_base + rows[:, None] * s_bn + cols[None, :] * s_bm, mask=keep, other=0.0)
        beta = beta.to(gl.float32)
        shift = gl.maximum(beta * LOG2E, beta * TINY + NEG_INIT)  # finfo.min * log2(e) stays finite
    if BIAS == BIAS_TABLE:  # ext[r_i - c_j] (self-attention: N == M); the operand is padded to the tiles: no masks
        r_i = gl.load(bias_base + rows).to(gl.int32, bitcast=True)  # row terms at 0
        neg_c = gl.load(bias_base + s_bn + cols).to(gl.int32, bitcast=True)  # -c_j at s_bn
        row_ptrs = bias_base + s_bm + r_i  # the extended table at s_bm
        shift = gl.load(row_ptrs[:, None] + neg_c[None, :])
    return f, scale, shift


@gluon.jit
def _static_scores(h, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, cols, M, is_last,
                   MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, EVEN_M: gl.constexpr):
    """``x = s2 - m`` under the static maximum, one FFMA per score (+ beta2), masked as ``_mask_scores``."""
    f, scale, shift = _scaled(h, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, cols, M, MEAN_ABS, BIAS)
    if BIAS == BIAS_TABLE or BIAS == BIAS_DENSE:  # a tile of shifts (0 + shift is not folded: -0.0)
        x = gl.fma(f, scale, shift - m_i[:, None])
    else:
        x = gl.fma(f, scale, gl.zeros_like(f) + shift - m_i[:, None])
    return _mask_scores(x, bias_base, s_bn, s_bm, rows, row_mask, cols, M, is_last, BIAS, EVEN_M)


@gluon.jit
def _exp_rows(x, l_i, POLY_EVERY: gl.constexpr, CLAMP: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """``(p, l)``: p = exp2(x) float32, l += rowsum p (unchanged under ``ROWSUM_MMA``: the tensor cores sum P)."""
    p = exp2(x, POLY_EVERY, CLAMP)
    if not ROWSUM_MMA:
        l_i = l_i + gl.sum(p, axis=1)
    return p, l_i


@gluon.jit
def _probs(h, m_i, l_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, cols, M, is_last,
           MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, ONLINE: gl.constexpr, EVEN_M: gl.constexpr,
           POLY_EVERY: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """``(p, m, l, alpha)`` of one score tile ``h`` (float32 integers): p = exp2(s2 - m) float32
    (l unchanged under ``ROWSUM_MMA``: the tensor cores sum P).

    ``is_last`` (a uniform runtime flag): the tile may hold columns ``>= M`` (zero-filled K rows), set
    to -inf here only, so full tiles pay no column mask.
    """
    alpha = l_i  # unused unless ONLINE
    if ONLINE:
        f, scale, shift = _scaled(h, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, cols, M, MEAN_ABS,
                                  BIAS)
        if BIAS == BIAS_TABLE or BIAS == BIAS_DENSE:
            s = gl.fma(f, scale, shift)
        else:
            s = gl.fma(f, scale, gl.zeros_like(f) + shift)
        s = _mask_scores(s, bias_base, s_bn, s_bm, rows, row_mask, cols, M, is_last, BIAS, EVEN_M)
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha
        m_i = m_new
        x = s - m_i[:, None]
    else:
        x = _static_scores(h, m_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, cols, M, is_last,
                           MEAN_ABS, BIAS, EVEN_M)
    # x is in [-LIMIT, P_OFFSET] under the static maximum without a mask, a dense bias or columns past M
    clamp: gl.constexpr = ONLINE or not EVEN_M or BIAS == BIAS_DENSE or BIAS == BIAS_MASK
    p, l_i = _exp_rows(x, l_i, POLY_EVERY, clamp, ROWSUM_MMA)
    return p, m_i, l_i, alpha


@gluon.jit
def _rescale(o, alpha, o_layout: gl.constexpr, ONLINE: gl.constexpr):
    """``o * alpha`` per row for the running maximum; ``o`` unchanged under the static maximum."""
    if ONLINE:
        o = o * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    return o


@gluon.jit
def _step(q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, j, n_tiles, s, o, ot, lsum, p, pf, m_i,
          l_i, alpha, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h, M, LAST,
          MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, ONLINE: gl.constexpr, EVEN_M: gl.constexpr,
          BLOCK_M: gl.constexpr, KC: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr,
          o_layout: gl.constexpr, ot_layout: gl.constexpr, p_layout: gl.constexpr, l_layout: gl.constexpr,
          POLY_EVERY: gl.constexpr, ROWSUM_MMA: gl.constexpr, DVT: gl.constexpr):
    """Iteration ``j``: enters with tile j's probabilities ``pf`` and P.V_{j-1} in flight; leaves with
    tile j+1's probabilities and P.V_j in flight (``LAST``, constexpr or a uniform flag: tile j+1 is the
    last, its columns ``>= M`` masked). ``ROWSUM_MMA``: P.1_j is issued (and retired) with P.V_j, as is
    the value tail's product (``DVT`` > 0)."""
    s = _issue_qk(q_s, k_s, k_bar, j + 1, s, NKC, STAGES)
    # retires P.V_{j-1}. ONLINE rescales O next: after a partial wait ptxas cannot prove the P.V it
    # reads retired and serialises every wgmma of the kernel, the static loop's too (C7514); a full
    # wait keeps that cost in the fallback loop.
    o, p, lsum = _retire_pv(o, p, lsum, 0 if ONLINE else NKC, ROWSUM_MMA)
    ot = _retire_tail(ot, 0 if ONLINE else NKC, DVT)
    _load_vs(v_desc, vt_desc, v_s, vt_s, v_bar, b, h, j - 1 + STAGES, (j > 0) & (j - 1 + STAGES < n_tiles), BLOCK_M,
             STAGES, DVT)
    o, lsum, p = _issue_pv(v_s, ones_s, v_bar, j, o, lsum, pf, alpha, STAGES, ONLINE, o_layout, p_layout, l_layout,
                           ROWSUM_MMA)
    ot = _issue_tail(vt_s, j, ot, p, alpha, STAGES, ONLINE, ot_layout, DVT)
    # retires S_{j+1}; P.V_j (and P.1_j, the tail's P.V_j) stay in flight
    s = warpgroup_mma_wait(num_outstanding=1 + (1 if ROWSUM_MMA else 0) + (1 if DVT > 0 else 0), deps=(s,))
    _load_k(k_desc, k_s, k_bar, bh, j + 1 + STAGES, j + 1 + STAGES < n_tiles, BLOCK_M, KC, NKC, STAGES)
    pf, m_i, l_i, alpha = _probs(s, m_i, l_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask,
                                 (j + 1) * BLOCK_M + col_base, M, LAST, MEAN_ABS, BIAS, ONLINE, EVEN_M, POLY_EVERY,
                                 ROWSUM_MMA)
    return s, o, ot, lsum, p, pf, m_i, l_i, alpha


@gluon.jit
def _retire_pv(o, p, lsum, outstanding: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """Wait until at most ``outstanding`` wgmma groups are in flight: P.V (and P.1) retired."""
    if ROWSUM_MMA:
        o, p, lsum = warpgroup_mma_wait(num_outstanding=outstanding, deps=(o, p, lsum))
    else:
        o, p = warpgroup_mma_wait(num_outstanding=outstanding, deps=(o, p))
    return o, p, lsum


@gluon.jit
def _issue_pv(v_s, ones_s, v_bar, tile, o, lsum, pf, alpha, STAGES: gl.constexpr, ONLINE: gl.constexpr,
              o_layout: gl.constexpr, p_layout: gl.constexpr, l_layout: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """Rescale (ONLINE), round P to V's type and issue ``O += P . V_tile`` (and ``lsum += P . 1``) async."""
    o = _rescale(o, alpha, o_layout, ONLINE)
    p = gl.convert_layout(pf.to(v_s.dtype), p_layout)
    slot = tile % STAGES
    mbarrier.wait(v_bar.index(slot), (tile // STAGES) & 1)
    o = warpgroup_mma(p, v_s.index(slot), o, is_async=True)
    if ROWSUM_MMA:
        lsum = _rescale(lsum, alpha, l_layout, ONLINE)
        p_l = gl.convert_layout(p, gl.DotOperandLayout(operand_index=0, parent=l_layout, k_width=2))
        lsum = warpgroup_mma(p_l, ones_s.permute((1, 0)), lsum, is_async=True)
    return o, lsum, p


@gluon.jit
def _issue_tail(vt_s, tile, ot, p, alpha, STAGES: gl.constexpr, ONLINE: gl.constexpr, ot_layout: gl.constexpr,
                DVT: gl.constexpr):
    """``O_tail += P . V_tail`` async with the bf16/fp16 P of ``_issue_pv`` (which waited for the tile's V
    barrier); ``ot`` unchanged without a value tail (``DVT`` 0)."""
    if DVT > 0:
        ot = _rescale(ot, alpha, ot_layout, ONLINE)
        p_t = gl.convert_layout(p, gl.DotOperandLayout(operand_index=0, parent=ot_layout, k_width=2))
        ot = warpgroup_mma(p_t, vt_s.index(tile % STAGES), ot, is_async=True)
    return ot


@gluon.jit
def _retire_tail(ot, outstanding: gl.constexpr, DVT: gl.constexpr):
    """``_retire_pv``'s wait for the tail accumulator (the same count: it passes at once after that wait)."""
    if DVT > 0:
        ot = warpgroup_mma_wait(num_outstanding=outstanding, deps=(ot,))
    return ot


@gluon.jit
def _last_pv(v_s, vt_s, ones_s, v_bar, last, o, ot, lsum, p, pf, alpha, STAGES: gl.constexpr, ONLINE: gl.constexpr,
             o_layout: gl.constexpr, ot_layout: gl.constexpr, p_layout: gl.constexpr, l_layout: gl.constexpr,
             ROWSUM_MMA: gl.constexpr, DVT: gl.constexpr):
    """Retire everything, then ``O += P_last . V_last``; returns the finished (retired) O, O tail and lsum."""
    o, p, lsum = _retire_pv(o, p, lsum, 0, ROWSUM_MMA)
    ot = _retire_tail(ot, 0, DVT)
    o, lsum, p = _issue_pv(v_s, ones_s, v_bar, last, o, lsum, pf, alpha, STAGES, ONLINE, o_layout, p_layout,
                           l_layout, ROWSUM_MMA)
    ot = _issue_tail(vt_s, last, ot, p, alpha, STAGES, ONLINE, ot_layout, DVT)
    o, p, lsum = _retire_pv(o, p, lsum, 0, ROWSUM_MMA)
    ot = _retire_tail(ot, 0, DVT)
    return o, ot, lsum


@gluon.jit
def _attend(q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, m_i, c, c_rows, b_ptr, bias_base,
            s_bn, s_bm, rows, row_mask, bh, b, h, M, MEAN_ABS: gl.constexpr, BIAS: gl.constexpr, ONLINE: gl.constexpr,
            EVEN_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, KC: gl.constexpr,
            NKC: gl.constexpr, DVP: gl.constexpr, DVT: gl.constexpr, STAGES: gl.constexpr, PEEL: gl.constexpr,
            s_layout: gl.constexpr, o_layout: gl.constexpr, ot_layout: gl.constexpr, POLY_EVERY: gl.constexpr,
            ROWSUM_MMA: gl.constexpr):
    """All key tiles of the program: ``(o, ot, l, m)`` with ``o = sum_j p_ij V_j`` (unnormalised; ``ot`` its
    channels ``[DVP, DVP + DVT)`` when ``DVT`` > 0, else an unused placeholder).

    Iteration ``j`` enters with the probabilities of tile j in registers (``pn``) and the P.V of tile
    j-1 in flight; it issues S_{j+1}, retires P.V_{j-1}, issues P.V_j, retires S_{j+1} and computes the
    probabilities of tile j+1 while P.V_j runs on the tensor cores. ``ROWSUM_MMA``: l is the
    ``(BLOCK_N, ONES_N)`` accumulator ``lsum = P . 1`` (its columns equal), issued beside each P.V.
    """
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    l_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[BLOCK_N // 16, 1],
                                                       instr_shape=[16, ONES_N, 16])
    pdt: gl.constexpr = v_desc.dtype
    n_tiles = gl.cdiv(M, BLOCK_M)
    col_base = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    l_i = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, s_layout))
    s = _issue_qk(q_s, k_s, k_bar, 0, gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout), NKC, STAGES)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    _load_k(k_desc, k_s, k_bar, bh, STAGES, STAGES < n_tiles, BLOCK_M, KC, NKC, STAGES)
    pf, m_i, l_i, alpha = _probs(s, m_i, l_i, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base,
                                 M, n_tiles == 1, MEAN_ABS, BIAS, ONLINE, EVEN_M, POLY_EVERY, ROWSUM_MMA)
    p = gl.zeros([BLOCK_N, BLOCK_M], pdt, p_layout)
    o = warpgroup_mma_init(gl.zeros([BLOCK_N, DVP], gl.float32, o_layout))  # loop-carried as an async result
    lsum = l_i  # unused without ROWSUM_MMA
    ot = l_i  # unused without a value tail
    if DVT > 0:
        ot = warpgroup_mma_init(gl.zeros([BLOCK_N, DVT], gl.float32, ot_layout))
    if ROWSUM_MMA:
        lsum = warpgroup_mma_init(gl.zeros([BLOCK_N, ONES_N], gl.float32, l_layout))
    if PEEL:  # the last tile's probabilities peeled: only it masks columns >= M (ptxas: more registers)
        for j in range(n_tiles - 2):
            s, o, ot, lsum, p, pf, m_i, l_i, alpha = _step(
                q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, j, n_tiles, s, o, ot, lsum, p, pf,
                m_i, l_i, alpha, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h, M, False,
                MEAN_ABS, BIAS, ONLINE, EVEN_M, BLOCK_M, KC, NKC, STAGES, o_layout, ot_layout, p_layout, l_layout,
                POLY_EVERY, ROWSUM_MMA, DVT)
        last = 0
        if n_tiles >= 2:
            s, o, ot, lsum, p, pf, m_i, l_i, alpha = _step(
                q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, n_tiles - 2, n_tiles, s, o, ot,
                lsum, p, pf, m_i, l_i, alpha, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b,
                h, M, True, MEAN_ABS, BIAS, ONLINE, EVEN_M, BLOCK_M, KC, NKC, STAGES, o_layout, ot_layout, p_layout,
                l_layout, POLY_EVERY, ROWSUM_MMA, DVT)
            last = n_tiles - 1
    else:  # one loop; the uniform last-tile flag is if-converted by ptxas (an FSEL per score, every tile)
        for j in range(n_tiles - 1):
            s, o, ot, lsum, p, pf, m_i, l_i, alpha = _step(
                q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, j, n_tiles, s, o, ot, lsum, p, pf,
                m_i, l_i, alpha, c, c_rows, b_ptr, bias_base, s_bn, s_bm, rows, row_mask, col_base, bh, b, h, M,
                j + 2 == n_tiles, MEAN_ABS, BIAS, ONLINE, EVEN_M, BLOCK_M, KC, NKC, STAGES, o_layout, ot_layout,
                p_layout, l_layout, POLY_EVERY, ROWSUM_MMA, DVT)
        last = n_tiles - 1
    o_done, ot_done, lsum = _last_pv(v_s, vt_s, ones_s, v_bar, last, o, ot, lsum, p, pf, alpha, STAGES, ONLINE,
                                     o_layout, ot_layout, p_layout, l_layout, ROWSUM_MMA, DVT)
    if ROWSUM_MMA:
        l_i = gl.convert_layout(gl.max(lsum, axis=1), gl.SliceLayout(1, s_layout))  # the ONES_N columns are equal
    return o_done, ot_done, l_i, m_i


@gluon.jit
def _ones_operand(v_s, ROWSUM_MMA: gl.constexpr, BLOCK_M: gl.constexpr, num_warps: gl.constexpr):
    """The ``(ONES_N, BLOCK_M)`` ones operand of ROWSUM_MMA in shared memory (K-major, written once by all
    ``num_warps`` warps), or ``v_s`` as an unused placeholder."""
    ones_s = v_s
    if ROWSUM_MMA:
        ones_s = gl.allocate_shared_memory(v_s.dtype, [ONES_N, BLOCK_M],
                                           gl.NVMMASharedLayout.get_default_for([ONES_N, BLOCK_M], v_s.dtype))
        ones_s.store(gl.full([ONES_N, BLOCK_M], 1.0, v_s.dtype,
                             gl.BlockedLayout([1, 8], [ONES_N, 32 // ONES_N], [1, num_warps], [1, 0])))
        fence_async_shared()
        gl.thread_barrier()
    return ones_s


@gluon.jit
def _binary_attn_fwd_sm90_kernel(
    q_desc, k_desc, v_desc, vt_desc, out_ptr, lse_ptr, state_ptr, a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr,
    bias_ptr, beta_max_ptr, s_bias_b, s_bias_h, s_bn, s_bm, H, N, M, scale_log2, inv_nd, inv_md,
    D: gl.constexpr, DV: gl.constexpr, NKC: gl.constexpr, STAGES: gl.constexpr, MEAN_ABS: gl.constexpr,
    BIAS: gl.constexpr, BETA_MAX: gl.constexpr, STATIC_MAX: gl.constexpr, LIMIT: gl.constexpr,
    P_OFFSET: gl.constexpr, PEEL: gl.constexpr, EVEN_M: gl.constexpr, POLY_EVERY: gl.constexpr,
    ROWSUM_MMA: gl.constexpr, DVT: gl.constexpr, num_warps: gl.constexpr,
):
    """Binary attention forward of one (query tile, batch*head); see the module notation. ``DVT`` > 0: V's
    channels ``[DVP, DVP + DVT)`` come through ``vt_desc`` into a second accumulator (Dv 72 as 64 + 16, not a
    128-wide P.V); 0: ``vt_desc`` is unused."""
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
    pid_n = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    bh64 = bh.to(gl.int64)
    n_tiles = gl.cdiv(M, BLOCK_M)

    q_s = gl.allocate_shared_memory(q_desc.dtype, [NKC, BLOCK_N, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_N, KC], q_desc.dtype))
    k_s = gl.allocate_shared_memory(k_desc.dtype, [STAGES * NKC, BLOCK_M, KC],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, KC], k_desc.dtype))
    v_s = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_M, DVP],
                                    gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVP], v_desc.dtype))
    vt_s = v_s  # unused without a value tail
    if DVT > 0:
        vt_s = gl.allocate_shared_memory(vt_desc.dtype, [STAGES, BLOCK_M, DVT],
                                         gl.NVMMASharedLayout.get_default_for([BLOCK_M, DVT], vt_desc.dtype))
    q_bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar.index(0), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(i), count=1)
        mbarrier.init(v_bar.index(i), count=1)

    mbarrier.expect(q_bar.index(0), NKC * q_desc.block_type.nbytes)
    for c in gl.static_range(NKC):
        tma.async_copy_global_to_shared(q_desc, [bh, pid_n * BLOCK_N, c * KC], q_bar.index(0),
                                        q_s.index(c).reshape(q_desc.block_type.shape))
    for t in gl.static_range(STAGES):
        _load_k(k_desc, k_s, k_bar, bh, t, t < n_tiles, BLOCK_M, KC, NKC, STAGES)
        _load_vs(v_desc, vt_desc, v_s, vt_s, v_bar, b, h, t, t < n_tiles, BLOCK_M, STAGES, DVT)

    rows, row_mask, c, c_rows, bound, row_shift, bias_base, b_rows_ptr = _row_scalars(
        a_ptr, b_ptr, sums_q_ptr, sums_k_ptr, bmax_ptr, bias_ptr, beta_max_ptr, s_bias_b, s_bias_h, bh, b, h, pid_n,
        gl.num_programs(0), N, M, scale_log2, inv_nd, inv_md, D, MEAN_ABS, BIAS, BETA_MAX, BLOCK_N, row_layout,
        num_warps)
    ones_s = _ones_operand(v_s, ROWSUM_MMA, BLOCK_M, num_warps)
    mbarrier.wait(q_bar.index(0), 0)
    online_m = gl.full([BLOCK_N], NEG_INIT, gl.float32, row_layout)
    if STATIC_MAX:
        if gl.max(bound, axis=0) * 2.0 <= LIMIT:
            o, ot, l_i, m_i = _attend(q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc,
                                      bound - P_OFFSET, c, c_rows, b_rows_ptr, bias_base, s_bn, s_bm, rows, row_mask,
                                      bh, b, h, M, MEAN_ABS, BIAS, False, EVEN_M, BLOCK_N, BLOCK_M, KC, NKC, DVP,
                                      DVT, STAGES, PEEL, s_layout, o_layout, ot_layout, POLY_EVERY, ROWSUM_MMA)
        else:
            o, ot, l_i, m_i = _attend(q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc,
                                      online_m, c, c_rows, b_rows_ptr, bias_base, s_bn, s_bm, rows, row_mask, bh, b,
                                      h, M, MEAN_ABS, BIAS, True, EVEN_M, BLOCK_N, BLOCK_M, KC, NKC, DVP, DVT,
                                      STAGES, PEEL, s_layout, o_layout, ot_layout, POLY_EVERY, ROWSUM_MMA)
    else:
        o, ot, l_i, m_i = _attend(q_s, k_s, v_s, vt_s, ones_s, k_bar, v_bar, k_desc, v_desc, vt_desc, online_m, c,
                                  c_rows, b_rows_ptr, bias_base, s_bn, s_bm, rows, row_mask, bh, b, h, M, MEAN_ABS,
                                  BIAS, True, EVEN_M, BLOCK_N, BLOCK_M, KC, NKC, DVP, DVT, STAGES, PEEL, s_layout,
                                  o_layout, ot_layout, POLY_EVERY, ROWSUM_MMA)
    mbarrier.invalidate(q_bar.index(0))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bar.index(i))
        mbarrier.invalidate(v_bar.index(i))
    # out in (B, N, H, DV) storage (the launcher's ``output_layout.new_output``); strides derived here, not
    # passed: three stride arguments cost 17 registers (123 -> 140 at D 64, 3 CTAs per SM instead of 4)
    out_base = out_ptr + (b.to(gl.int64) * N * H + h) * DV
    _store(out_base, H * DV, lse_ptr, state_ptr, o, l_i, m_i, row_shift, bh64 * N, rows, row_mask, pid_n * BLOCK_N, N,
           DV, BLOCK_N, DVP, o_layout)
    _store_tail(out_base, H * DV, ot, l_i, pid_n * BLOCK_N, N, DV, BLOCK_N, DVP, DVT, ot_layout)
