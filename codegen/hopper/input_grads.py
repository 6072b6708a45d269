"""dq and dk of the Gluon backward from the kernels' raw sums: one elementwise pass per gradient.

``dq = raw * clip * (scale a) + sum_i da_i * sgn(q) / (N D)`` (dk likewise with b, the clip bits of k and the
db totals), ``(B, H, L, D)``: the ste sign term where ``raw`` is given (ste's dQ / dK sums), the mean_abs
chain where the weighting is mean_abs, stored in v's dtype and the output layout (``bitlower.output_layout``).
The signs and clip masks are read from the forward's packed bits
(``bitlower.packing``: bit ``b`` of word ``w`` is channel ``32 w + b``), so one pass reads the raw sums and a
few words per row and writes the gradient. It replaces a chain of PyTorch ops (zeros,
a float32 copy of the signs, an int64 unpack of the clip bits, products and a sum) that moved ~7 float32 tensors
of the gradient's size.
"""
from __future__ import annotations

import triton
import triton.language as tl

from bitlower.output_layout import new_output

from ..configs import PROLOGUE_ROWS, padded_dim
from ..launch import launch
from ..tiles import load_bits, unpack_sign_bits


@triton.jit
def _input_grad_kernel(grad_ptr, raw_ptr, bits_ptr, clip_ptr, own_ptr, total_ptr, length, heads, s_gb, s_gh, s_gn,
                       bit_words, clip_words, scale, inv_count, D: tl.constexpr, DP: tl.constexpr,
                       BLOCK_L: tl.constexpr, HAS_RAW: tl.constexpr, MEAN_ABS: tl.constexpr):
    """grad = ``raw * clip * (scale own)`` (``HAS_RAW``, raw float32 ``(B*H, L, D)``) ``+ sgn * total[bh] *
    inv_count`` (``MEAN_ABS``), stored in grad's dtype at strides ``(s_gb, s_gh, s_gn)``; program = (row block,
    batch*head)."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < length
    rows64 = bh * length + rows.to(tl.int64)  # rows of (B*H*L)
    d = tl.arange(0, DP)
    mask = row_mask[:, None] & (d < D)[None, :]
    grad = tl.zeros((BLOCK_L, DP), dtype=tl.float32)
    if HAS_RAW:
        clip = load_bits(clip_ptr, rows64, row_mask, clip_words, D=D, DP=DP)  # 0 / 1
        own = tl.load(own_ptr + rows64, mask=row_mask, other=0.0)
        raw = tl.load(raw_ptr + rows64[:, None] * D + d[None, :], mask=mask, other=0.0)
        grad = (raw * clip) * (scale * own)[:, None]
    if MEAN_ABS:
        sgn = unpack_sign_bits(bits_ptr, rows64, row_mask, bit_words, D=D, DP=DP).to(tl.float32)
        grad += sgn * (tl.load(total_ptr + bh) * inv_count)
    base = grad_ptr + (bh // heads) * s_gb + (bh % heads) * s_gh
    tl.store(base + rows.to(tl.int64)[:, None] * s_gn + d[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)


def input_grad(raw, own, clip, d_own, bits, dim: int, spec, need: bool, shape, like):
    """dq (or dk) ``(B, H, L, D)`` in ``like``'s dtype and ``output_layout``'s ``(B, L, H, D)`` storage; None when
    not wanted, zeros for hamming / stopgrad without mean_abs.

    Args:
        raw: ste's raw sign-term sums ``(B, H, L, D)`` float32 contiguous, or None.
        own: the operand's scalars ``a`` (or ``b``) ``(B, H, L, 1)`` float32 (read with ``raw``).
        clip: the operand's packed clip bits ``(B, H, L, 1, W)`` int32 (read with ``raw``).
        d_own: the per-key totals of da (or db) ``(B, H, M, 1)`` float32 (mean_abs).
        bits: the operand's packed sign bits ``(B, H, L, 1, W)`` int32 (mean_abs).
        like: v (the gradient's dtype and device).
    """
    if not need or not spec.qk_grad:
        return None
    bsz, heads, length = shape[:3]
    grad = new_output(bsz, heads, length, dim, like=like)
    mean_abs = spec.weighting == "mean_abs"
    if raw is None and not mean_abs:
        return grad.zero_()
    total = d_own.sum(dim=(2, 3)) if mean_abs else bits  # (B, H); unused without mean_abs
    bits = bits.contiguous()
    clip = clip.contiguous() if raw is not None else bits
    own = own.contiguous() if raw is not None else bits
    launch(_input_grad_kernel, (triton.cdiv(length, PROLOGUE_ROWS), bsz * heads),
        grad, bits if raw is None else raw, bits, clip, own, total, length, heads, grad.stride(0), grad.stride(1),
        grad.stride(2), bits.shape[-1], clip.shape[-1], float(spec.scale), 1.0 / (length * dim), D=dim,
        DP=padded_dim(dim), BLOCK_L=PROLOGUE_ROWS, HAS_RAW=raw is not None, MEAN_ABS=mean_abs, num_warps=4,
    )
    return grad
