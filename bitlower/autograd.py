"""Autograd of ``bitlower::binary_attention_fwd``; ``bitlower.ops`` registers it with the operator.

Saved for backward: v, the bias, the output, packed sign bits, packed STE clip bits, the effective
scalars and the row state — never the float q and k. Two outputs are saved smaller than the operator
returns them: under ``mean_abs`` the effective scalars are one value per (batch, head) (the operator's
``(B, H, L, P)`` rows repeat it), saved ``(B, H, 1, P)``; the log-sum-exp is not saved, the backward takes
it from the row state (``(m2 + log2 l) ln 2``, the same -inf rows). 12 bytes less per query row and layer.
"""
from __future__ import annotations

import math

import torch

from bitlower.spec import FWD_PARAMS, FWD_TENSORS, bind_fwd_args, spec_of_fwd_args


def _setup_context(ctx, inputs, output):
    bound = bind_fwd_args(inputs)
    q, k, v, a, b, bias = (bound[name] for name in FWD_TENSORS)
    out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state = output
    ctx.spec = spec_of_fwd_args(bound)
    ctx.kernel_options = bound["kernel_options"]
    ctx.head_dim = q.shape[-1]
    ctx.q_dtype, ctx.k_dtype = q.dtype, k.dtype
    ctx.has_bias = bias is not None
    per_head = ctx.spec.weighting == "mean_abs"
    ctx.lengths = (a_eff.shape[2], b_eff.shape[2]) if per_head else None
    if per_head:  # one value per (batch, head), repeated over the rows: keep one row
        a_eff, b_eff = a_eff[:, :, :1].clone(), b_eff[:, :, :1].clone()
    ctx.save_for_backward(v, bias, out, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)
    ctx.a_shape = None if a is None else a.shape
    ctx.b_shape = None if b is None else b.shape
    ctx.a_dtype = None if a is None else a.dtype
    ctx.b_dtype = None if b is None else b.dtype


def _backward(ctx, grad_out, *unused_grads):
    v, bias, out, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state = ctx.saved_tensors
    if ctx.lengths is not None:  # the operator's (B, H, L, P) rows again
        a_eff, b_eff = (x.expand(x.shape[0], x.shape[1], n, x.shape[3]).contiguous()
                        for x, n in zip((a_eff, b_eff), ctx.lengths))
    lse = (row_state[..., 0] + row_state[..., 1]) * math.log(2.0)  # (B, H, N); -inf where log2 l is
    needs = [bool(x) for x in ctx.needs_input_grad[:len(FWD_TENSORS)]]
    needs[-1] = needs[-1] and ctx.has_bias  # the bias
    nothing_else = (None,) * (len(FWD_PARAMS) - len(FWD_TENSORS))
    if grad_out is None or not any(needs):
        return (None,) * len(FWD_TENSORS) + nothing_else
    if not ctx.spec.save_bits:
        raise RuntimeError("binary_attention_fwd ran with save_bits=False, so it kept nothing for a backward; "
                           "call it with save_bits=True when gradients are needed")
    grads = torch.ops.bitlower.binary_attention_bwd(
        grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state, *ctx.spec.op_args(),
        ctx.head_dim, needs, out, ctx.kernel_options,
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
    return (dq, dk, dv, da, db, dbias) + nothing_else


def register(forward_op) -> None:
    """Register the backward of ``forward_op`` (``bitlower.ops.binary_attention_fwd``)."""
    forward_op.register_autograd(_backward, setup_context=_setup_context)
