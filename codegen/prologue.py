"""Fused sign + pack + scalar prologue: one pass over q (or k) straight from the projection.

Writes, per token, the packed sign bits, the packed STE clip bits, optionally an int8 ``+-1``
sign tensor for the tensor-core dot, the per-token scalar seed (the given ``a``, or 1, times NaN
on rows with a NaN channel) and, for ``mean_abs``, the per-(batch, head) sum of ``|x|``.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from bitlower.packing import num_words

from .configs import PROLOGUE_ROWS, PROLOGUE_WARPS, padded_dim
from .tiles import load_signs


@triton.jit
def _sign_pack_kernel(
    x_ptr, s_xb, s_xh, s_xl, s_xd,
    bits_ptr, clip_ptr, signs_ptr, eff_ptr, given_ptr, sums_ptr,
    H, L, clip,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr,
    WRITE_CLIP: tl.constexpr, WRITE_SIGNS: tl.constexpr, GIVEN: tl.constexpr, SUM_ABS: tl.constexpr,
):
    """Sign/pack one operand.

    Notation: x ``(B, H, L, D)`` any strides; bits/clip ``(B, H, L, W)`` int32, ``W = ceil(D/32)``;
    signs ``(B, H, L, DP)`` int8; eff ``(B, H, L)`` float32; sums ``(B*H,)`` float32.
    Parallelised over (row block, batch*head); each program walks its rows' ``W`` words.
    """
    clip = tl.cast(clip, tl.float32)  # float scalars may arrive as float64 under Inductor
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < L
    base = x_ptr + b.to(tl.int64) * s_xb + h.to(tl.int64) * s_xh
    W: tl.constexpr = (D + 31) // 32
    out_row = bh.to(tl.int64) * L + rows  # (BLOCK_L,) row index into (B*H*L)
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


def round_to_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (nearest even), in plain Python so tracing sees a constant."""
    if dtype == torch.float16:
        return struct.unpack("<e", struct.pack("<e", value))[0]
    bits32 = struct.unpack("<I", struct.pack("<f", value))[0]
    if dtype == torch.bfloat16:  # keep the top 16 bits of the float32 pattern, ties to even
        bits32 = ((bits32 + 0x7FFF + ((bits32 >> 16) & 1)) >> 16) << 16
    return struct.unpack("<f", struct.pack("<I", bits32 & 0xFFFFFFFF))[0]


def sign_pack(x: torch.Tensor, given: torch.Tensor | None, spec, signs: bool):
    """Run the prologue on ``x`` ``(B, H, L, D)``.

    Args:
        x: q or k, float16/bfloat16/float32, any strides.
        given: ``(B, H, L)`` scalars for ``token`` weighting, else None.
        spec: the call's ``CallSpec``.
        signs: also write the int8 sign tensor ``(B, H, L, DP)``.

    Returns:
        ``(bits, clip, signs_or_None, eff, sums)``: bits ``(B, H, L, 1, W)`` int32; clip bits with
        ``W = 0`` words unless ``grad_mode == "ste"``; eff ``(B, H, L, 1)`` float32 (not yet
        multiplied by the mean for ``mean_abs``); sums ``(B, H)`` float32 of ``|x|`` (mean_abs).
    """
    bsz, heads, length, dim = x.shape
    words = num_words(dim)
    dp = padded_dim(dim)
    dev = x.device
    bits = torch.empty(bsz, heads, length, 1, words, dtype=torch.int32, device=dev)
    ste = spec.saves_clip_bits
    clip = torch.empty(bsz, heads, length, 1, words if ste else 0, dtype=torch.int32, device=dev)
    sign_t = torch.empty(bsz, heads, length, dp, dtype=torch.int8, device=dev) if signs else None
    eff = torch.empty(bsz, heads, length, 1, dtype=torch.float32, device=dev)
    mean_abs = spec.weighting == "mean_abs"
    sums = torch.zeros(bsz, heads, dtype=torch.float32, device=dev) if mean_abs else eff
    given_t = given.to(torch.float32).contiguous() if given is not None else eff
    # |x| <= clip is compared in x's dtype by the reference: round the threshold the same way.
    clip_value = round_to_dtype(spec.ste_clip, x.dtype)
    grid = (triton.cdiv(length, PROLOGUE_ROWS), bsz * heads)
    torch.library.wrap_triton(_sign_pack_kernel)[grid](
        x, *x.stride(),
        bits, clip if ste else bits, sign_t if signs else bits, eff, given_t, sums,
        heads, length, clip_value,
        D=dim, DP=dp, BLOCK_L=PROLOGUE_ROWS,
        WRITE_CLIP=ste, WRITE_SIGNS=signs, GIVEN=given is not None, SUM_ABS=mean_abs,
        num_warps=PROLOGUE_WARPS,
    )
    return bits, clip, sign_t, eff, sums


def unpack_signs(bits: torch.Tensor, dim: int) -> torch.Tensor:
    """int8 ``(B, H, L, DP)`` ``+-1`` signs (0 past ``dim``) from packed ``(B, H, L, 1, W)`` bits."""
    bsz, heads, length = bits.shape[:3]
    dp = padded_dim(dim)
    out = torch.empty(bsz, heads, length, dp, dtype=torch.int8, device=bits.device)
    rows = bsz * heads * length
    grid = (triton.cdiv(rows, PROLOGUE_ROWS),)
    torch.library.wrap_triton(_unpack_rows_kernel)[grid](
        bits, out, rows, bits.shape[-1], D=dim, DP=dp, BLOCK_L=PROLOGUE_ROWS, num_warps=PROLOGUE_WARPS,
    )
    return out


@triton.jit
def _unpack_rows_kernel(bits_ptr, signs_ptr, total_rows, words, D: tl.constexpr, DP: tl.constexpr,
                        BLOCK_L: tl.constexpr):
    """Packed words ``(R, W)`` -> int8 signs ``(R, DP)``; parallelised over row blocks."""
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < total_rows
    rows64 = rows.to(tl.int64)
    signs = load_signs(bits_ptr, rows64, row_mask, words, D, DP, True)
    d = tl.arange(0, DP)
    tl.store(signs_ptr + rows64[:, None] * DP + d[None, :], signs, mask=row_mask[:, None])
