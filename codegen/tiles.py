"""Triton device helpers shared by the forward and backward kernels.

Notation (SPEC §1-3): a program holds a tile of ``BLOCK_N`` query rows ``i`` and walks
tiles of ``BLOCK_M`` key columns ``j``. Scores are kept in log2 units,
``s2_ij = S_ij * log2(e)``, so that ``exp(S - x) = exp2(s2 - x * log2(e))``.

- signs: int8 ``+-1`` tiles ``(rows, DP)``; channels ``>= D`` are 0, so the int8 tensor-core
  dot of two sign tiles is the exact integer ``h_ij = <sgn q_i, sgn k_j>``.
- ``DP``: ``D`` padded to a power of two, at least 32 (the int8 dot needs ``K >= 32``).
- bias kinds (constexpr ``BIAS``): ``BIAS_NONE``, ``BIAS_HEAD`` (per head), ``BIAS_TABLE``
  (relative-position table), ``BIAS_DENSE`` (dense float), ``BIAS_MASK`` (boolean mask).
"""
from __future__ import annotations

import triton
import triton.language as tl

BIAS_NONE, BIAS_HEAD, BIAS_TABLE, BIAS_DENSE, BIAS_MASK = (tl.constexpr(code) for code in range(5))
BIAS_CODES = {"none": BIAS_NONE.value, "head": BIAS_HEAD.value, "table": BIAS_TABLE.value,
              "dense": BIAS_DENSE.value, "mask": BIAS_MASK.value}  # spec.bias_kind -> constexpr BIAS
# operand type of the floating tensor-core dots (``fdot``); host code reads them as ``configs.DOT_*``
DOT_FP32, DOT_FP16, DOT_BF16 = (tl.constexpr(code) for code in range(3))

# 12582912.0 = 1.5 * 2**23: adding it to a small integer puts the integer in the low mantissa
# bits, so ``bitcast(h + 0x4B400000) - 12582912.0`` is the exact float32 of ``h`` for |h| < 2**22
# with two integer/float adds instead of the int->float conversion unit (SPEC §6 lever).
MAGIC_INT = tl.constexpr(0x4B400000)
MAGIC_FLOAT = tl.constexpr(12582912.0)
LOG2E = tl.constexpr(1.4426950408889634)  # 1 / ln(2); host code reads LOG2E.value
LN2 = tl.constexpr(0.6931471805599453)  # ln(2)
FLT_MAX = tl.constexpr(3.4028234663852886e38)  # torch.finfo(torch.float32).max
# |beta| * 2**-64 < 2**65 is below half an ulp of FLT_MAX (2**103), so ``beta * TINY - FLT_MAX`` is
# -FLT_MAX for finite beta, -inf for beta = -inf, +inf for +inf and NaN for NaN.
TINY = tl.constexpr(5.421010862427522e-20)  # 2**-64


@triton.jit
def int_to_float(h):
    """Exact float32 of an int32 tile with |h| < 2**22, without I2F."""
    return (h + MAGIC_INT).to(tl.float32, bitcast=True) - MAGIC_FLOAT


@triton.jit
def round_half_even(x):
    """``torch.round`` of float32 |x| < 2**22: the magic add rounds to nearest even."""
    return (x + MAGIC_FLOAT) - MAGIC_FLOAT


@triton.jit
def load_signs(ptr, rows, row_mask, stride_row, DP: tl.constexpr):
    """int8 ``+-1`` signs ``(R, DP)`` of ``rows`` from an int8 sign tensor (channel stride 1; 0 past ``D``)."""
    d = tl.arange(0, DP)
    return tl.load(ptr + rows[:, None] * stride_row + d[None, :], mask=row_mask[:, None], other=0)


@triton.jit
def unpack_sign_bits(ptr, rows, row_mask, stride_row, D: tl.constexpr, DP: tl.constexpr):
    """int8 ``+-1`` signs ``(R, DP)`` of ``rows`` from packed int32 words, 0 past ``D``.

    Word stride 1; bit ``b`` of word ``w`` is channel ``32w + b`` (``bitlower.packing``).
    """
    d = tl.arange(0, DP)
    words = tl.load(
        ptr + rows[:, None] * stride_row + (d // 32)[None, :],
        mask=row_mask[:, None] & (d < D)[None, :],
        other=0,
    )  # (R, DP), each word read by its 32 channels
    bit = (words >> (d % 32)[None, :]) & 1
    return tl.where((d < D)[None, :], bit * 2 - 1, 0).to(tl.int8)


@triton.jit
def sign_byte_words(ptr, rows, row_mask, stride_row, D: tl.constexpr, DP: tl.constexpr, ONE: tl.constexpr,
                    MINUS_ONE: tl.constexpr):
    """One-byte signs of ``rows`` from packed int32 words, four per int32 word: ``(R, DP // 4)``, byte ``c % 4``
    (little-endian) of word ``c // 4`` is channel ``c``: ``ONE`` where its bit is set, ``MINUS_ONE`` where clear
    (int8 byte values), 0 past ``D``.

    Four channels per arithmetic chain: a nibble of packed bits times ``0x00204081`` puts bit ``t`` at bit ``8t``
    (``& 0x01010101`` keeps those), and times ``ONE ^ MINUS_ONE`` flips those bytes of the ``MINUS_ONE`` pattern.
    Each packed word is loaded once. ``unpack_sign_bits`` (a load, a shift, a select and a byte pack per channel)
    took 384 SASS instructions per thread for a 64 x 64 int8 tile (sm_90, Triton 3.6).
    """
    WORDS: tl.constexpr = DP // 32
    BASE: tl.constexpr = ((MINUS_ONE % 256) * 0x01010101 + 2**31) % 2**32 - 2**31  # as a signed int32
    FLIP: tl.constexpr = (ONE % 256) ^ (MINUS_ONE % 256)
    w = tl.arange(0, WORDS)
    words = tl.load(ptr + rows[:, None] * stride_row + w[None, :], mask=row_mask[:, None] & (w * 32 < D)[None, :],
                    other=0)  # (R, W) int32
    nib = tl.arange(0, 8)
    nibbles = (words[:, :, None] >> (4 * nib)[None, None, :]) & 0xF  # (R, W, 8)
    spread = (nibbles * 0x00204081) & 0x01010101
    out = spread * FLIP ^ BASE  # wraps in int32: byte-wise, no carries (FLIP < 256)
    first = w[:, None] * 32 + nib[None, :] * 4  # first channel of each output word (W, 8)
    valid = tl.minimum(tl.maximum(D - first, 0), 4)
    keep = tl.where(valid >= 4, -1, (1 << (8 * valid)) - 1)  # bytes of channels < D
    return tl.reshape(out & keep[None, :, :], (rows.shape[0], DP // 4))


@triton.jit
def load_bits(ptr, rows, row_mask, stride_row, D: tl.constexpr, DP: tl.constexpr):
    """float32 0/1 tile ``(R, DP)`` of packed bits (clip masks), 0 past ``D``."""
    d = tl.arange(0, DP)
    words = tl.load(
        ptr + rows[:, None] * stride_row + (d // 32)[None, :],
        mask=row_mask[:, None] & (d < D)[None, :],
        other=0,
    )
    return ((words >> (d % 32)[None, :]) & 1).to(tl.float32)


@triton.jit
def table_index(rows, cols, grid_h, grid_w, prefix, HAS_PREFIX: tl.constexpr):
    """Relative-position table row of each pair ``(rows[i], cols[j])`` (see bitlower/relpos.py).

    The patch part is ``r_i - c_j + const`` with one per-row and one per-column term, so a
    tile costs one integer add per element (plus the prefix selects when there are prefix tokens).
    """
    width = 2 * grid_w - 1
    pr = tl.maximum(rows - prefix, 0)
    pc = tl.maximum(cols - prefix, 0)
    r = (pr // grid_w) * width + pr % grid_w  # (R,)
    c = (pc // grid_w) * width + pc % grid_w  # (C,)
    idx = r[:, None] - c[None, :] + ((grid_h - 1) * width + grid_w - 1)
    if HAS_PREFIX:
        base = (2 * grid_h - 1) * width
        qp = (rows < prefix)[:, None]
        kp = (cols < prefix)[None, :]
        idx = tl.where(qp, tl.where(kp, base + 2, base), tl.where(kp, base + 1, idx))
    return idx


@triton.jit
def bias_tile(
    bias_ptr, rows, cols, row_mask, col_mask, s_bn, s_bm, grid_h, grid_w, prefix,
    BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, LOG2_UNITS: tl.constexpr,
):
    """Additive bias tile ``(R, C)`` for ``BIAS_TABLE`` or ``BIAS_DENSE``; 0 otherwise.

    ``bias_ptr`` points at this (batch, head): the table column (contiguous rows) or the dense
    bias with strides ``s_bn, s_bm`` (0 on broadcast dims). Table values are pre-scaled by
    log2(e) by the launcher; a dense bias is scaled here when ``LOG2_UNITS``.
    """
    if BIAS == BIAS_TABLE:
        r = tl.where(row_mask, rows, 0)
        c = tl.where(col_mask, cols, 0)
        idx = table_index(r, c, grid_h, grid_w, prefix, HAS_PREFIX)
        return tl.load(bias_ptr + idx)
    elif BIAS == BIAS_DENSE:
        mask = row_mask[:, None] & col_mask[None, :]
        beta = tl.load(bias_ptr + rows[:, None] * s_bn + cols[None, :] * s_bm, mask=mask, other=0.0)
        beta = beta.to(tl.float32)
        if LOG2_UNITS:
            beta = beta * LOG2E
        return beta
    else:
        return 0.0


@triton.jit
def add_dense_bias(s2, beta):
    """``s2 + beta log2(e)`` for a dense bias tile ``beta`` in natural units, finite for finite ``beta``.

    ``beta log2(e)`` overflows to -inf below -FLT_MAX ln 2 (a finfo(float32).min padding fill), which
    would make a fully padded row keep no key; the max keeps such a score at -FLT_MAX and an -inf fill
    -inf (``TINY``). Two instructions per element beside the fused multiply-add.
    """
    return tl.maximum(s2 + beta * LOG2E, beta * TINY - FLT_MAX)


@triton.jit
def mask_keep(bias_ptr, rows, cols, row_mask, col_mask, s_bn, s_bm):
    """Boolean-mask tile ``(R, C)``: True where the pair is kept (``BIAS_MASK``)."""
    mask = row_mask[:, None] & col_mask[None, :]
    keep = tl.load(bias_ptr + rows[:, None] * s_bn + cols[None, :] * s_bm, mask=mask, other=1)
    return keep != 0


@triton.jit
def abs_max(ptr, length, BLOCK: tl.constexpr):
    """max |x| over ``length`` contiguous float32 values (NaN-propagating enough for a guard)."""
    best = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(ptr + offs, mask=offs < length, other=0.0)
        best = tl.maximum(best, tl.abs(x))
    return tl.max(best, axis=0)


@triton.jit
def fdot(a, b, acc, DOT: tl.constexpr):
    """``acc + a @ b`` on floating tensor cores: ``DOT_FP32`` (IEEE), ``DOT_FP16`` or ``DOT_BF16`` operands."""
    if DOT == DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif DOT == DOT_FP16:
        return tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    else:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)


def row_alignment(*row_strides: int) -> int:
    """The largest power of two <= 16 dividing every row stride (elements): a kernel's ``ROW_ALIGN``.

    The JIT marks only integers divisible by 16, so rows of 72 elements (DiT's D 72) were loaded as
    2-byte scalars; told 8, Triton issues 16-byte vectors where the base pointer is aligned too.
    """
    align = 16
    while align > 1 and any(stride % align for stride in row_strides):
        align //= 2
    return align


def operand_alignment(*tensors: torch.Tensor) -> int:
    """``row_alignment`` of the batch, head and row strides of ``(B, H, L, D)`` operands, over the dims of
    more than one index (a size-1 dim's stride never moves an address): views of a fused qkv or
    ``(B, N, H, D)`` storage have a head stride of D (72 at DiT), which the JIT does not mark either."""
    return row_alignment(*(t.stride(d) for t in tensors for d in range(3) if t.shape[d] > 1))


@triton.jit
def aligned(stride, ROW_ALIGN: tl.constexpr):
    """``stride`` itself (``ROW_ALIGN`` divides it: ``row_alignment``), written so Triton's alignment analysis
    learns the divisor (``tl.multiple_of`` takes tensors only). The one exception: the stride of a size-1
    dim, which ``operand_alignment`` leaves out; rounded here, it only ever multiplies index 0."""
    return stride // ROW_ALIGN * ROW_ALIGN
