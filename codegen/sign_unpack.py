"""The backward's sign operands from the forward's packed bits: q's and k's in one launch.

``_unpack_pair_kernel``: program ``(row block, side)``, side 0 unpacks q's ``(B*H*N)`` rows and side 1 k's
``(B*H*M)`` rows, ``PROLOGUE_ROWS`` rows per program, no communication. One-byte outputs (int8 +-1 for the
tl.dot kernels, float8 e4m3 +-1.0 bytes for the Gluon ones) are stored four per int32 word
(``tiles.sign_byte_words``); bf16 +-1.0 (the Gluon ste kernels' operands) element by element.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import PROLOGUE_ROWS, PROLOGUE_WARPS, padded_dim
from .launch import launch
from .tiles import sign_byte_words, unpack_sign_bits

# The stored type and +1 / -1 of each sign dtype (0 past D): float8 e4m3 as raw int8 bytes (stats.FP8_ONE)
SIGN_BITS = {torch.int8: (torch.int8, 1, -1), torch.float8_e4m3fn: (torch.int8, 0x38, 0xB8 - 256),
             torch.bfloat16: (torch.bfloat16, 1, -1)}


@triton.jit
def _unpack_side(bits_ptr, out_ptr, total_rows, words, D: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr,
                 ONE: tl.constexpr, MINUS_ONE: tl.constexpr, BYTES: tl.constexpr):
    """This program's row block of one side: packed ``(R, W)`` -> ``(R, DP)`` ``ONE`` / ``MINUS_ONE``."""
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < total_rows
    rows64 = rows.to(tl.int64)
    if BYTES:  # out_ptr: an int32 view
        packed = sign_byte_words(bits_ptr, rows64, row_mask, words, D, DP, ONE, MINUS_ONE)
        u = tl.arange(0, DP // 4)
        tl.store(out_ptr + rows64[:, None] * (DP // 4) + u[None, :], packed, mask=row_mask[:, None])
    else:
        signs = unpack_sign_bits(bits_ptr, rows64, row_mask, words, D=D, DP=DP)  # int8 +-1, 0 past D
        value = tl.where(signs > 0, ONE, tl.where(signs < 0, MINUS_ONE, 0)).to(tl.float32)  # exact: |value| < 2**8
        d = tl.arange(0, DP)
        tl.store(out_ptr + rows64[:, None] * DP + d[None, :], value.to(out_ptr.dtype.element_ty),
                 mask=row_mask[:, None])


@triton.jit
def _unpack_pair_kernel(q_bits_ptr, k_bits_ptr, q_out_ptr, k_out_ptr, q_rows, k_rows, words, D: tl.constexpr,
                        DP: tl.constexpr, BLOCK_L: tl.constexpr, ONE: tl.constexpr, MINUS_ONE: tl.constexpr,
                        BYTES: tl.constexpr):
    """Program ``(row block, side)``: side 0 q's rows, side 1 k's (``_unpack_side``)."""
    if tl.program_id(1) == 0:
        _unpack_side(q_bits_ptr, q_out_ptr, q_rows, words, D, DP, BLOCK_L, ONE, MINUS_ONE, BYTES)
    else:
        _unpack_side(k_bits_ptr, k_out_ptr, k_rows, words, D, DP, BLOCK_L, ONE, MINUS_ONE, BYTES)


def unpack_sign_pair(qbits: torch.Tensor, kbits: torch.Tensor | None, dim: int, dtype: torch.dtype = torch.int8,
                     dim_p: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, H, L, DP)`` ``+-1`` signs in ``dtype`` (int8, float8 e4m3 or bf16; 0 past ``dim``) of q's and k's
    packed ``(B, H, L, 1, W)`` bits, in one launch; ``kbits`` None: q's alone (``(q_signs, None)``).

    ``dim_p``: DP (0: ``configs.padded_dim(dim)``).
    """
    if dtype not in SIGN_BITS:
        raise ValueError(f"sign dtype must be one of {tuple(SIGN_BITS)}, got {dtype}")
    raw_dtype, one, minus_one = SIGN_BITS[dtype]
    dp = dim_p or padded_dim(dim)
    one_byte = raw_dtype.itemsize == 1
    outs = [torch.empty(*bits.shape[:3], dp, dtype=raw_dtype, device=bits.device)
            for bits in (qbits, kbits) if bits is not None]
    rows = [out.shape[0] * out.shape[1] * out.shape[2] for out in outs]
    stores = [out.view(torch.int32) if one_byte else out for out in outs]
    sides = len(outs)
    if sides == 2 and kbits.shape[-1] != qbits.shape[-1]:
        raise ValueError(f"q's and k's bits must have the same words per row, got {qbits.shape[-1]} and "
                         f"{kbits.shape[-1]}")
    launch(_unpack_pair_kernel, (max(1, triton.cdiv(max(rows), PROLOGUE_ROWS)), sides),
        qbits, kbits if sides == 2 else qbits, stores[0], stores[-1], rows[0], rows[-1], qbits.shape[-1], D=dim,
        DP=dp, BLOCK_L=PROLOGUE_ROWS, ONE=one, MINUS_ONE=minus_one, BYTES=one_byte, num_warps=PROLOGUE_WARPS)
    signs = [out.view(dtype) for out in outs]
    return signs[0], signs[1] if sides == 2 else None
