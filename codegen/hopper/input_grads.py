"""dq and dk of the Gluon backward from the kernels' raw sums: one elementwise pass, both gradients in one launch.

``dq = raw * clip * (scale a) + sum_i da_i * sgn(q) / (N D)`` (dk likewise with b, the clip bits of k and the
db totals), ``(B, H, L, D)``: the ste sign term where ``raw`` is given (ste's dQ / dK sums), the mean_abs
chain where the weighting is mean_abs, stored in v's dtype and the output layout (``bitlower.output_layout``).
The signs and clip masks are read from the forward's packed bits
(``bitlower.packing``: bit ``b`` of word ``w`` is channel ``32 w + b``), so one pass reads the raw sums and a
few words per row and writes the gradient. It replaces a chain of PyTorch ops (zeros,
a float32 copy of the signs, an int64 unpack of the clip bits, products and a sum) that moved ~7 float32 tensors
of the gradient's size. ``_input_grads_kernel``: program ``(row block, batch*head, side)``, side 0 dq's rows and
side 1 dk's, no communication.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitlower.output_layout import new_output

from ..configs import PROLOGUE_ROWS, padded_dim
from ..launch import launch
from ..tiles import load_bits, unpack_sign_bits


@dataclass(frozen=True)
class GradSide:
    """One gradient's operands (dq's: q's; dk's: k's).

    raw: ste's raw sign-term sums ``(B, H, L, D)`` float32 contiguous, or None.
    own: the operand's scalars ``a`` (or ``b``) ``(B, H, L, 1)`` float32 (read with ``raw``).
    clip: the operand's packed clip bits ``(B, H, L, 1, W)`` int32 (read with ``raw``).
    d_own: the per-key totals of da (or db) ``(B, H, M, 1)`` float32 (mean_abs).
    bits: the operand's packed sign bits ``(B, H, L, 1, W)`` int32.
    need: whether this gradient is wanted.
    """

    raw: torch.Tensor | None
    own: torch.Tensor
    clip: torch.Tensor
    d_own: torch.Tensor
    bits: torch.Tensor
    need: bool


@triton.jit
def _input_grad_side(grad_ptr, raw_ptr, bits_ptr, clip_ptr, own_ptr, total_ptr, length, heads, s_gb, s_gh, s_gn,
                     bit_words, clip_words, scale, inv_count, D: tl.constexpr, DP: tl.constexpr,
                     BLOCK_L: tl.constexpr, HAS_RAW: tl.constexpr, MEAN_ABS: tl.constexpr):
    """grad = ``raw * clip * (scale own)`` (``HAS_RAW``, raw float32 ``(B*H, L, D)``) ``+ sgn * total[bh] *
    inv_count`` (``MEAN_ABS``), stored in grad's dtype at strides ``(s_gb, s_gh, s_gn)``: this program's row
    block of batch*head ``program_id(1)``."""
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


@triton.jit
def _input_grads_kernel(grad_ptr, raw_ptr, bits_ptr, clip_ptr, own_ptr, total_ptr, length, s_gb, s_gh, s_gn,
                        bit_words, clip_words, inv_count, grad2_ptr, raw2_ptr, bits2_ptr, clip2_ptr, own2_ptr,
                        total2_ptr, length2, s2_gb, s2_gh, s2_gn, bit2_words, clip2_words, inv2_count, heads, scale,
                        D: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr, HAS_RAW: tl.constexpr,
                        HAS_RAW2: tl.constexpr, MEAN_ABS: tl.constexpr, SIDES: tl.constexpr):
    """Program ``(row block, batch*head, side)``: side 0 the first gradient, side 1 (``SIDES`` 2) the second
    (``_input_grad_side``)."""
    if SIDES == 2 and tl.program_id(2) == 1:
        _input_grad_side(grad2_ptr, raw2_ptr, bits2_ptr, clip2_ptr, own2_ptr, total2_ptr, length2, heads, s2_gb,
                         s2_gh, s2_gn, bit2_words, clip2_words, scale, inv2_count, D, DP, BLOCK_L, HAS_RAW2,
                         MEAN_ABS)
    else:
        _input_grad_side(grad_ptr, raw_ptr, bits_ptr, clip_ptr, own_ptr, total_ptr, length, heads, s_gb, s_gh, s_gn,
                         bit_words, clip_words, scale, inv_count, D, DP, BLOCK_L, HAS_RAW, MEAN_ABS)


def input_grads(q_side: GradSide, k_side: GradSide, dim: int, spec, like):
    """``(dq, dk)``, each ``(B, H, L, D)`` in ``like``'s dtype and ``output_layout``'s ``(B, L, H, D)`` storage,
    the wanted ones formed in one launch; None where not wanted, zeros for hamming / stopgrad without mean_abs.

    ``like``: v (the gradients' dtype and device).
    """
    if not spec.qk_grad:
        return None, None
    mean_abs = spec.weighting == "mean_abs"
    grads = [new_output(*side.bits.shape[:3], dim, like=like) if side.need else None for side in (q_side, k_side)]
    launched = []
    for side, grad in zip((q_side, k_side), grads):
        if grad is None:
            continue
        if side.raw is None and not mean_abs:
            grad.zero_()
        else:
            launched.append((side, grad, _side_args(side, grad, dim, mean_abs)))
    if launched:
        bsz, heads = launched[0][1].shape[:2]
        rows = max(grad.shape[2] for _, grad, _ in launched)
        first, last = launched[0], launched[-1]
        launch(_input_grads_kernel, (triton.cdiv(rows, PROLOGUE_ROWS), bsz * heads, len(launched)),
            *first[2], *last[2], heads, float(spec.scale), D=dim, DP=padded_dim(dim), BLOCK_L=PROLOGUE_ROWS,
            HAS_RAW=first[0].raw is not None, HAS_RAW2=last[0].raw is not None, MEAN_ABS=mean_abs,
            SIDES=len(launched), num_warps=4,
        )
    return grads[0], grads[1]


def _side_args(side: GradSide, grad: torch.Tensor, dim: int, mean_abs: bool) -> tuple:
    """One side's kernel arguments, ``grad`` through ``inv_count`` of ``_input_grads_kernel``."""
    length = grad.shape[2]
    total = side.d_own.sum(dim=(2, 3)) if mean_abs else side.bits  # (B, H); unused without mean_abs
    bits = side.bits.contiguous()
    has_raw = side.raw is not None
    clip = side.clip.contiguous() if has_raw else bits
    own = side.own.contiguous() if has_raw else bits
    return (grad, side.raw if has_raw else bits, bits, clip, own, total, length, grad.stride(0), grad.stride(1),
            grad.stride(2), bits.shape[-1], clip.shape[-1], 1.0 / (length * dim))
