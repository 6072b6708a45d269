"""Stats pass of the tl.dot forward (both option sets) and of the Hopper forward: one read of q (or k).

Writes only what the call needs: the per-(batch, head) sum of ``|x|`` (``mean_abs``, by atomics),
the per-token scalars ``eff = given * (1 or NaN)`` and their per-(batch, head) maximum ``|eff|``
(the static row bound of ``token``/``none`` weighting), and, when a backward will run
(``spec.save_bits``), the packed sign bits and STE clip bits, and the ``+-1`` sign tensor that the
main kernel's tensor-core dot reads (``signs=True``; int8, or float8 e4m3 bytes for the Hopper
kernel). Parallelised over (row block, batch*head, operand): ``pair_stats`` runs q and k of a call in
one launch (grid axis 2; two launches when their lengths or dtypes differ); programs meet only in the
atomics of the per-head sums and maxima. Two load forms (constexpr ``LOAD``): ``LOAD_TILE`` reads one
``(BLOCK_L, DP)`` tile (16-byte vectors on contiguous rows; the "v2" option set and the Hopper
forward), ``LOAD_WORDS`` one 32-channel word at a time (64-byte row segments, nothing read past
``ceil(D / 32)`` words; the "v1" option set, measured faster than "v2" at padded D: DiT D 72, 0.207 vs
0.226 ms, kernel_notes round 4).
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from bitlower.packing import num_words

from .configs import PROLOGUE_ROWS, PROLOGUE_WARPS, padded_dim
from .launch import launch
from .tiles import aligned, operand_alignment


def round_to_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (nearest even), in plain Python so tracing sees a constant."""
    if dtype == torch.float16:
        return struct.unpack("<e", struct.pack("<e", value))[0]
    bits32 = struct.unpack("<I", struct.pack("<f", value))[0]
    if dtype == torch.bfloat16:  # keep the top 16 bits of the float32 pattern, ties to even
        bits32 = ((bits32 + 0x7FFF + ((bits32 >> 16) & 1)) >> 16) << 16
    return struct.unpack("<f", struct.pack("<I", bits32 & 0xFFFFFFFF))[0]


LOAD_TILE = tl.constexpr(0)  # one (BLOCK_L, DP) tile per program: 16-byte vectors, channels padded to DP
LOAD_WORDS = tl.constexpr(1)  # one (BLOCK_L, 32) channel word at a time: no channel past ceil(D / 32) words read


@triton.jit
def _pack_words(flags, DP: tl.constexpr, BLOCK_L: tl.constexpr):
    """int32 words ``(BLOCK_L, DP // 32)`` of a 0/1 int32 tile ``(BLOCK_L, DP)``; bit b of word w = channel 32w+b."""
    lane = tl.arange(0, DP) % 32
    shifted = flags << lane[None, :]  # (BLOCK_L, DP), distinct bits per word: sum == or
    return tl.sum(tl.reshape(shifted, (BLOCK_L, DP // 32, 32)), axis=2)


@triton.jit
def _tile_stats(
    x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr, max_ptr, H, L, clip,
    D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, BLOCK_L: tl.constexpr,
    WRITE_BITS: tl.constexpr, WRITE_CLIP: tl.constexpr, WRITE_SIGNS: tl.constexpr, WRITE_EFF: tl.constexpr,
    GIVEN: tl.constexpr, SUM_ABS: tl.constexpr, SIGN_ONE: tl.constexpr, HEAD_MAX: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """``LOAD_TILE``: the program's rows as one ``(BLOCK_L, DP)`` tile."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < L
    d = tl.arange(0, DP)
    ch_mask = d < D
    base = x_ptr + (bh // H).to(tl.int64) * aligned(s_xb, ROW_ALIGN) + (bh % H).to(tl.int64) * aligned(s_xh, ROW_ALIGN)
    s_xl = aligned(s_xl, ROW_ALIGN)  # rows (and heads) of 72 elements: 16-byte loads too
    x = tl.load(base + rows[:, None] * s_xl + d[None, :] * s_xd, mask=row_mask[:, None] & ch_mask[None, :],
                other=0.0).to(tl.float32)  # (BLOCK_L, DP)
    out_row = bh.to(tl.int64) * L + rows  # (BLOCK_L,) row of (B*H*L)
    w = tl.arange(0, DP // 32)
    word_mask = row_mask[:, None] & (w < W)[None, :]
    if WRITE_BITS:
        words = _pack_words(((x >= 0) & ch_mask[None, :]).to(tl.int32), DP, BLOCK_L)
        tl.store(bits_ptr + out_row[:, None] * W + w[None, :], words, mask=word_mask)
    if WRITE_CLIP:
        words = _pack_words(((tl.abs(x) <= clip) & ch_mask[None, :]).to(tl.int32), DP, BLOCK_L)
        tl.store(clip_ptr + out_row[:, None] * W + w[None, :], words, mask=word_mask)
    if WRITE_SIGNS:  # NaN -> -1 like packing.sgn; bytes +-SIGN_ONE (1: int8, 0x38: float8 e4m3 +-1.0)
        minus: tl.constexpr = -1 if SIGN_ONE == 1 else SIGN_ONE - 128  # float8: the sign bit set (0xB8)
        signs = tl.where(ch_mask[None, :], tl.where(x >= 0, SIGN_ONE, minus), 0).to(tl.int8)
        tl.store(signs_ptr + out_row[:, None] * DP + d[None, :], signs, mask=row_mask[:, None])
    if SUM_ABS:
        tl.atomic_add(sums_ptr + bh, tl.sum(tl.sum(tl.abs(x), axis=1), axis=0))
    if WRITE_EFF:
        has_nan = tl.max((x != x).to(tl.int32), axis=1)  # (BLOCK_L,)
        eff = tl.where(has_nan > 0, float("nan"), 1.0)
        if GIVEN:
            eff = eff * tl.load(given_ptr + out_row, mask=row_mask, other=1.0)
        tl.store(eff_ptr + out_row, eff, mask=row_mask)
        if HEAD_MAX:  # max |eff| for the static bound; a NaN row makes the whole output NaN anyway
            tl.atomic_max(max_ptr + bh, tl.max(tl.where(row_mask & (eff == eff), tl.abs(eff), 0.0), axis=0))


@triton.jit
def _word_stats(
    x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr, H, L, clip,
    D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, BLOCK_L: tl.constexpr,
    WRITE_CLIP: tl.constexpr, WRITE_SIGNS: tl.constexpr, GIVEN: tl.constexpr, SUM_ABS: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """``LOAD_WORDS``: the program's rows one 32-channel word at a time; bits and eff always written."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < L
    base = x_ptr + b.to(tl.int64) * aligned(s_xb, ROW_ALIGN) + h.to(tl.int64) * aligned(s_xh, ROW_ALIGN)
    out_row = bh.to(tl.int64) * L + rows  # (BLOCK_L,) row index into (B*H*L)
    s_xl = aligned(s_xl, ROW_ALIGN)
    lane = tl.arange(0, 32)
    has_nan = tl.zeros([BLOCK_L], dtype=tl.int32)
    abs_sum = tl.zeros([BLOCK_L], dtype=tl.float32)
    for w in tl.static_range(W):
        ch = w * 32 + lane
        ch_mask = ch < D
        mask = row_mask[:, None] & ch_mask[None, :]
        x = tl.load(base + rows[:, None] * s_xl + ch[None, :] * s_xd, mask=mask, other=0.0).to(tl.float32)
        pos = (x >= 0) & ch_mask[None, :]
        word = tl.sum(pos.to(tl.int32) << lane[None, :], axis=1)  # distinct bits: sum == or
        tl.store(bits_ptr + out_row * W + w, word, mask=row_mask)
        if WRITE_CLIP:
            inside = (tl.abs(x) <= clip) & ch_mask[None, :]
            cword = tl.sum(inside.to(tl.int32) << lane[None, :], axis=1)
            tl.store(clip_ptr + out_row * W + w, cword, mask=row_mask)
        if WRITE_SIGNS:
            sign = tl.where(ch_mask[None, :], tl.where(pos, 1, -1), 0).to(tl.int8)
            tl.store(signs_ptr + out_row[:, None] * DP + ch[None, :], sign, mask=row_mask[:, None])
        has_nan = tl.maximum(has_nan, tl.max((x != x).to(tl.int32), axis=1))
        if SUM_ABS:
            abs_sum += tl.sum(tl.abs(x), axis=1)
    if WRITE_SIGNS:
        for w in tl.static_range(W, DP // 32):  # pad channels of the int8 tensor are 0
            ch = w * 32 + lane
            zero = tl.zeros([BLOCK_L, 32], dtype=tl.int8)
            tl.store(signs_ptr + out_row[:, None] * DP + ch[None, :], zero, mask=row_mask[:, None])
    eff = tl.where(has_nan > 0, float("nan"), 1.0)
    if GIVEN:
        eff = eff * tl.load(given_ptr + out_row, mask=row_mask, other=1.0)
    tl.store(eff_ptr + out_row, eff, mask=row_mask)
    if SUM_ABS:
        tl.atomic_add(sums_ptr + bh, tl.sum(abs_sum, axis=0))


@triton.jit
def _operand_stats(
    x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr, max_ptr, H, L, clip,
    D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, BLOCK_L: tl.constexpr,
    WRITE_BITS: tl.constexpr, WRITE_CLIP: tl.constexpr, WRITE_SIGNS: tl.constexpr, WRITE_EFF: tl.constexpr,
    GIVEN: tl.constexpr, SUM_ABS: tl.constexpr, SIGN_ONE: tl.constexpr, HEAD_MAX: tl.constexpr,
    LOAD: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Stats of one operand by the ``LOAD`` form. ``LOAD_WORDS`` reads neither ``max_ptr`` (None) nor the
    ``WRITE_BITS`` / ``WRITE_EFF`` / ``SIGN_ONE`` / ``HEAD_MAX`` options (bits and eff always, int8 signs)."""
    if LOAD == LOAD_WORDS:
        _word_stats(x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr,
                    H, L, clip, D=D, DP=DP, W=W, BLOCK_L=BLOCK_L, WRITE_CLIP=WRITE_CLIP, WRITE_SIGNS=WRITE_SIGNS,
                    GIVEN=GIVEN, SUM_ABS=SUM_ABS, ROW_ALIGN=ROW_ALIGN)
    else:
        _tile_stats(x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr,
                    max_ptr, H, L, clip, D=D, DP=DP, W=W, BLOCK_L=BLOCK_L, WRITE_BITS=WRITE_BITS,
                    WRITE_CLIP=WRITE_CLIP, WRITE_SIGNS=WRITE_SIGNS, WRITE_EFF=WRITE_EFF, GIVEN=GIVEN,
                    SUM_ABS=SUM_ABS, SIGN_ONE=SIGN_ONE, HEAD_MAX=HEAD_MAX, ROW_ALIGN=ROW_ALIGN)


@triton.jit
def _stats_kernel(
    x_ptr, s_xb, s_xh, s_xl, s_xd,
    bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr, max_ptr,
    x2_ptr, s2_xb, s2_xh, s2_xl, s2_xd,
    bits2_ptr, clip2_ptr, signs2_ptr, eff2_ptr, given2_ptr, sums2_ptr, max2_ptr,
    H, L, clip,
    D: tl.constexpr, DP: tl.constexpr, W: tl.constexpr, BLOCK_L: tl.constexpr,
    WRITE_BITS: tl.constexpr, WRITE_CLIP: tl.constexpr, WRITE_SIGNS: tl.constexpr, WRITE_EFF: tl.constexpr,
    GIVEN: tl.constexpr, SUM_ABS: tl.constexpr, SIGN_ONE: tl.constexpr, HEAD_MAX: tl.constexpr,
    LOAD: tl.constexpr, PAIR: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Stats of one operand, or with ``PAIR`` of two (grid axis 2: the ``x`` group, then the ``x2`` group; q
    and k of one call, same length and dtype); see the module notation. Each group is passed whole to its
    own call, so the JIT's specialisation of each argument (a stride of 1, say) stays its own."""
    clip = tl.cast(clip, tl.float32)  # float scalars arrive as float64 under Inductor
    if PAIR:
        if tl.program_id(2) == 1:
            _operand_stats(x2_ptr, s2_xb, s2_xh, s2_xl, s2_xd, bits2_ptr, clip2_ptr, signs2_ptr, eff2_ptr,
                           given2_ptr, sums2_ptr, max2_ptr, H, L, clip, D=D, DP=DP, W=W, BLOCK_L=BLOCK_L,
                           WRITE_BITS=WRITE_BITS, WRITE_CLIP=WRITE_CLIP, WRITE_SIGNS=WRITE_SIGNS,
                           WRITE_EFF=WRITE_EFF, GIVEN=GIVEN, SUM_ABS=SUM_ABS, SIGN_ONE=SIGN_ONE,
                           HEAD_MAX=HEAD_MAX, LOAD=LOAD, ROW_ALIGN=ROW_ALIGN)
        else:
            _operand_stats(x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr,
                           sums_ptr, max_ptr, H, L, clip, D=D, DP=DP, W=W, BLOCK_L=BLOCK_L,
                           WRITE_BITS=WRITE_BITS, WRITE_CLIP=WRITE_CLIP, WRITE_SIGNS=WRITE_SIGNS,
                           WRITE_EFF=WRITE_EFF, GIVEN=GIVEN, SUM_ABS=SUM_ABS, SIGN_ONE=SIGN_ONE,
                           HEAD_MAX=HEAD_MAX, LOAD=LOAD, ROW_ALIGN=ROW_ALIGN)
    else:
        _operand_stats(x_ptr, s_xb, s_xh, s_xl, s_xd, bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr,
                       max_ptr, H, L, clip, D=D, DP=DP, W=W, BLOCK_L=BLOCK_L, WRITE_BITS=WRITE_BITS,
                       WRITE_CLIP=WRITE_CLIP, WRITE_SIGNS=WRITE_SIGNS, WRITE_EFF=WRITE_EFF, GIVEN=GIVEN,
                       SUM_ABS=SUM_ABS, SIGN_ONE=SIGN_ONE, HEAD_MAX=HEAD_MAX, LOAD=LOAD, ROW_ALIGN=ROW_ALIGN)


FP8_ONE = 0x38  # float8 e4m3 1.0 (exponent 7 = bias, mantissa 0); 0xB8 is -1.0, 0x00 is +0.0


def head_stats(x: torch.Tensor, given: torch.Tensor | None, spec, *, eff: bool, signs: bool = False,
               fp8_signs: bool = False, head_max: bool | None = None, word_loads: bool = False,
               dim_p: int = 0):
    """Run the stats pass on ``x`` ``(B, H, L, D)``.

    Args:
        x: q or k, float16/bfloat16/float32, any strides.
        given: ``(B, H, L)`` scalars for ``token`` weighting, else None.
        spec: the call's ``CallSpec``; ``spec.save_bits`` asks for packed bits (and clip bits for ste).
        eff: write the per-token scalars and their per-(batch, head) max (``token``/``none``).
        signs: write the int8 ``+-1`` sign tensor ``(B, H, L, DP)``.
        fp8_signs: write it as float8 e4m3 ``+-1.0`` instead (``torch.float8_e4m3fn``; 0 past ``D``),
            the operand of a float8 tensor-core product (exact: integer sums of +-1 below 2**8).
        head_max: reduce the per-(batch, head) max ``|eff|`` (None: whenever ``eff`` without ``word_loads``).
        word_loads: ``LOAD_WORDS`` (the forward's "v1" option set): packed bits whatever ``spec.save_bits``,
            clip bits for ste, eff rows; needs ``eff``, int8 signs, no head maxima.
        dim_p: DP, the sign tensor's width (the plan's ``dim_p``; 0: ``configs.padded_dim(D)``).

    Raises:
        ValueError: ``head_max`` without ``eff``, or ``word_loads`` with an output it does not write.

    Returns:
        ``(bits, clip, eff_rows, sums, maxes, signs)``: bits/clip ``(B, H, L, 1, W)`` int32 (``W = 0``
        when not written); eff_rows ``(B, H, L, 1)`` float32 or None; sums ``(B, H)`` of ``|x|`` or None;
        maxes ``(B, H)`` max ``|eff|`` or None; signs int8 (float8 e4m3 with ``fp8_signs``) or None.
    """
    flags = _flags(x, given is not None, spec, eff, signs, fp8_signs, head_max, word_loads, dim_p)
    group, outputs = _operand_group(x, given, flags, _zero_sums(x, flags, 1)[0])
    _launch_stats(x, spec, flags, group, (None,) * len(group))
    return outputs


def pair_stats(q: torch.Tensor, k: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None, spec, *,
               eff: bool, signs: bool = False, fp8_signs: bool = False, head_max: bool | None = None,
               word_loads: bool = False, dim_p: int = 0):
    """``head_stats`` of q (with ``a``) and of k (with ``b``) in one launch: ``(q_outputs, k_outputs)``.

    Two launches where q and k differ in length or dtype (cross-attention). Options as ``head_stats``.
    """
    options = dict(eff=eff, signs=signs, fp8_signs=fp8_signs, head_max=head_max, word_loads=word_loads, dim_p=dim_p)
    if q.shape[2] != k.shape[2] or q.dtype != k.dtype or (a is None) != (b is None):
        return head_stats(q, a, spec, **options), head_stats(k, b, spec, **options)
    flags = _flags(q, a is not None, spec, **options)
    q_zeros, k_zeros = _zero_sums(q, flags, 2)  # one fill for both operands' accumulators
    q_group, q_outputs = _operand_group(q, a, flags, q_zeros)
    k_group, k_outputs = _operand_group(k, b, flags, k_zeros)
    _launch_stats(q, spec, flags, q_group, k_group)
    return q_outputs, k_outputs


def _flags(x, given: bool, spec, eff, signs, fp8_signs, head_max, word_loads, dim_p) -> dict:
    """What the pass writes for operands shaped like ``x`` (checked as ``head_stats`` documents)."""
    dim = x.shape[-1]
    head_max = eff and not word_loads if head_max is None else head_max
    if head_max and not eff:
        raise ValueError("head_stats: head_max=True needs eff=True (the maximum is of the eff rows)")
    if word_loads and (not eff or head_max or fp8_signs):
        raise ValueError("head_stats: word_loads writes eff rows and int8 signs, no head maxima")
    words = num_words(dim) if spec.save_bits or word_loads else 0
    return dict(eff=eff, signs=signs, fp8_signs=fp8_signs, head_max=head_max, word_loads=word_loads, given=given,
                dim_p=dim_p or padded_dim(dim), words=words, clip_words=words if spec.saves_clip_bits else 0,
                sum_abs=spec.weighting == "mean_abs")


def _zero_sums(x, flags: dict, operands: int):
    """``operands`` ``(2, B, H)`` float32 zero blocks (|x| sums, max |eff|) from one allocation and fill,
    or Nones when the pass accumulates neither."""
    if not (flags["sum_abs"] or flags["head_max"]):
        return (None,) * operands
    return torch.zeros(operands, 2, x.shape[0], x.shape[1], dtype=torch.float32, device=x.device).unbind(0)


def _operand_group(x, given, flags: dict, zeros):
    """The kernel arguments of one operand (input, strides, outputs or dummies) and the outputs it returns;
    ``zeros``: its ``(2, B, H)`` block of ``_zero_sums`` (or None)."""
    bsz, heads, length, _ = x.shape
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    bits = torch.empty(bsz, heads, length, 1, flags["words"], dtype=torch.int32, device=dev)
    clip = torch.empty(bsz, heads, length, 1, flags["clip_words"], dtype=torch.int32, device=dev)
    eff_rows = torch.empty(bsz, heads, length, 1, **f32) if flags["eff"] else None
    sums = zeros[0] if flags["sum_abs"] else None  # (B, H) views, contiguous
    maxes = zeros[1] if flags["head_max"] else None
    sign_t = torch.empty(bsz, heads, length, flags["dim_p"], dtype=torch.int8, device=dev) if flags["signs"] else None
    dummy = bits if flags["words"] else torch.empty(1, dtype=torch.int32, device=dev)
    fdummy = torch.empty(1, **f32)
    given_t = given.to(torch.float32).contiguous() if given is not None else fdummy
    group = (x, *x.stride(), bits if flags["words"] else dummy, clip if flags["clip_words"] else dummy,
             dummy if sign_t is None else sign_t, fdummy if eff_rows is None else eff_rows, given_t,
             fdummy if sums is None else sums,
             maxes if flags["head_max"] else None if flags["word_loads"] else fdummy)
    signs_out = sign_t.view(torch.float8_e4m3fn) if sign_t is not None and flags["fp8_signs"] else sign_t
    return group, (bits, clip, eff_rows, sums, maxes, signs_out)


def _launch_stats(x, spec, flags: dict, group, group2) -> None:
    """One ``_stats_kernel`` launch: ``group`` alone (``group2`` all None) or both groups (``PAIR``)."""
    bsz, heads, length, dim = x.shape
    pair = group2[0] is not None
    grid = (triton.cdiv(length, PROLOGUE_ROWS), bsz * heads, 2 if pair else 1)
    launch(_stats_kernel, grid, *group, *group2, heads, length, round_to_dtype(spec.ste_clip, x.dtype),
           D=dim, DP=flags["dim_p"], W=max(num_words(dim), 1), BLOCK_L=PROLOGUE_ROWS,
           WRITE_BITS=flags["words"] > 0, WRITE_CLIP=flags["clip_words"] > 0, WRITE_SIGNS=flags["signs"],
           WRITE_EFF=flags["eff"], GIVEN=flags["given"], SUM_ABS=flags["sum_abs"],
           SIGN_ONE=FP8_ONE if flags["fp8_signs"] else 1, HEAD_MAX=flags["head_max"],
           LOAD=(LOAD_WORDS if flags["word_loads"] else LOAD_TILE).value, PAIR=pair,
           ROW_ALIGN=operand_alignment(x, *(() if group2[0] is None else (group2[0],))),
           num_warps=PROLOGUE_WARPS)
