"""Autograd of ``bitlower::binary_attention_fwd``; ``bitlower.ops`` registers it with the operator.

Saved for backward: v, the bias, the output, the log-sum-exp, packed sign bits, packed STE clip
bits, the effective scalars and the row state — never the float q and k.
"""
from __future__ import annotations

import torch

from bitlower.spec import OP_ARGS

# Positions in binary_attention_fwd's schema: the six tensors, OP_ARGS, save_bits, kernel_options.
_Q, _K, _V, _A, _B, _BIAS = range(6)
_STATIC = slice(6, 6 + len(OP_ARGS))
_SAVE_BITS = 6 + len(OP_ARGS)
_KERNEL_OPTIONS = _SAVE_BITS + 1
_INPUTS = _KERNEL_OPTIONS + 1


def _setup_context(ctx, inputs, output):
    q, k, v, a, b, bias = inputs[:6]
    out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state = output
    ctx.static = inputs[_STATIC]
    ctx.saved_bits = len(inputs) <= _SAVE_BITS or bool(inputs[_SAVE_BITS])
    ctx.kernel_options = inputs[_KERNEL_OPTIONS] if len(inputs) > _KERNEL_OPTIONS else ""
    ctx.head_dim = q.shape[-1]
    ctx.q_dtype, ctx.k_dtype = q.dtype, k.dtype
    ctx.has_bias = bias is not None
    ctx.save_for_backward(v, bias, out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)
    ctx.a_shape = None if a is None else a.shape
    ctx.b_shape = None if b is None else b.shape
    ctx.a_dtype = None if a is None else a.dtype
    ctx.b_dtype = None if b is None else b.dtype


def _backward(ctx, grad_out, *unused_grads):
    v, bias, out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state = ctx.saved_tensors
    needs = [bool(x) for x in ctx.needs_input_grad[:6]]
    needs[_BIAS] = needs[_BIAS] and ctx.has_bias
    if grad_out is None or not any(needs):
        return (None,) * _INPUTS
    if not ctx.saved_bits:
        raise RuntimeError("binary_attention_fwd ran with save_bits=False, so it kept nothing for a backward; "
                           "call it with save_bits=True when gradients are needed")
    grads = torch.ops.bitlower.binary_attention_bwd(
        grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state, *ctx.static, ctx.head_dim,
        needs, out,
        ctx.kernel_options,
    )
    dq, dk, dv, da, db, dbias = (g if need and g.numel() else None for g, need in zip(grads, needs))
    if dq is not None:
        dq = dq.to(ctx.q_dtype)
    if dk is not None:
        dk = dk.to(ctx.k_dtype)
    if da is not None:
        da = da.reshape(ctx.a_shape).to(ctx.a_dtype)
    if db is not None:
        db = db.reshape(ctx.b_shape).to(ctx.b_dtype)
    return (dq, dk, dv, da, db, dbias) + (None,) * (_INPUTS - 6)


def register(forward_op) -> None:
    """Register the backward of ``forward_op`` (``bitlower.ops.binary_attention_fwd``)."""
    forward_op.register_autograd(_backward, setup_context=_setup_context)
