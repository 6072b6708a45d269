"""Packed-sign layout and the integer Hamming dot, in plain PyTorch.

Layout contract (shared with the Triton kernels in ``bitlower.codegen``):

- ``sgn(x) = +1 if x >= 0 else -1``; bit 1 means +1.
- The head dim is split into 32-bit words: bit ``b`` of word ``w`` holds channel
  ``32 * w + b``. Words are stored as int32 (two's complement of the uint32 value).
- Channels past ``D`` are 0 in every packed tensor, so they never differ.
- ``<sgn q, sgn k> = D - 2 * popcount(qbits XOR kbits)``, exact in integers.
"""
from __future__ import annotations

import torch

WORD_BITS = 32
# SWAR popcount masks for 32-bit words.
_M1 = 0x55555555
_M2 = 0x33333333
_M4 = 0x0F0F0F0F


def sgn(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` (also at +0 and -0), -1 where ``x < 0``; NaN maps to -1."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def num_words(head_dim: int) -> int:
    """Number of 32-bit words that hold ``head_dim`` sign bits."""
    return (head_dim + WORD_BITS - 1) // WORD_BITS


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Pack ``x >= 0`` along the last dim into int32 words.

    Args:
        x: floating tensor ``(..., D)``.

    Returns:
        int32 tensor ``(..., ceil(D / 32))``; bit ``b`` of word ``w`` is channel ``32w + b``.
    """
    d = x.shape[-1]
    w = num_words(d)
    bits = (x >= 0).to(torch.int64)  # (..., D)
    pad = w * WORD_BITS - d
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))  # padded channels are 0
    bits = bits.reshape(*x.shape[:-1], w, WORD_BITS)  # (..., W, 32)
    weights = torch.bitwise_left_shift(
        torch.ones(WORD_BITS, dtype=torch.int64, device=x.device),
        torch.arange(WORD_BITS, dtype=torch.int64, device=x.device),
    )
    words = (bits * weights).sum(-1)  # (..., W) in [0, 2**32)
    # Reinterpret the unsigned 32-bit value as int32 (two's complement).
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean ``(..., D)`` tensor with the same layout as :func:`pack_signs`."""
    return pack_signs(torch.where(mask, 1.0, -1.0))


def unpack_bits(words: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: bool tensor ``(..., head_dim)``, True where the bit is 1."""
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=words.device)
    w64 = words.to(torch.int64) & 0xFFFFFFFF  # (..., W) as unsigned
    bits = torch.bitwise_right_shift(w64.unsqueeze(-1), shifts) & 1  # (..., W, 32)
    bits = bits.reshape(*words.shape[:-1], words.shape[-1] * WORD_BITS)
    return bits[..., :head_dim].bool()


def unpack_signs(words: torch.Tensor, head_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """±1 tensor ``(..., head_dim)`` from packed words."""
    return torch.where(unpack_bits(words, head_dim), 1.0, -1.0).to(dtype)


def popcount32(words: torch.Tensor) -> torch.Tensor:
    """Number of set bits in each 32-bit word (int32 input), as int32.

    SWAR on the low 31 bits plus the sign bit counted apart: every intermediate stays in
    ``[0, 2**31)``, so no step relies on signed overflow.
    """
    x = words.to(torch.int32)
    sign_bit = (x < 0).to(torch.int32)
    x = x & 0x7FFFFFFF
    x = x - (torch.bitwise_right_shift(x, 1) & _M1)
    x = (x & _M2) + (torch.bitwise_right_shift(x, 2) & _M2)
    x = (x + torch.bitwise_right_shift(x, 4)) & _M4
    x = x + torch.bitwise_right_shift(x, 8)
    x = x + torch.bitwise_right_shift(x, 16)
    return (x & 0x3F) + sign_bit


def hamming_dot(
    qbits: torch.Tensor,
    kbits: torch.Tensor,
    head_dim: int,
    chunk: int = 256,
    out_dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """Integer ``<sgn q_i, sgn k_j>`` from packed words, exact.

    Args:
        qbits: int32 ``(..., N, W)``.
        kbits: int32 ``(..., M, W)``; leading dims broadcast with ``qbits``.
        head_dim: ``D``, the number of real channels.
        chunk: query rows per step; bounds the ``(..., chunk, M, W)`` temporary.
        out_dtype: result dtype; any float dtype holds these small integers exactly.

    Returns:
        ``(..., N, M)`` with integer values in ``[-D, D]``.
    """
    rows = []
    for start in range(0, qbits.shape[-2], chunk):
        qb = qbits[..., start:start + chunk, :].unsqueeze(-2)  # (..., n, 1, W)
        diff = torch.bitwise_xor(qb, kbits.unsqueeze(-3))  # (..., n, M, W)
        ham = popcount32(diff).sum(-1, dtype=torch.int32)  # (..., n, M)
        rows.append((head_dim - 2 * ham).to(out_dtype))
    return torch.cat(rows, dim=-2)
