"""The ``bitlower`` operators: binary-attention forward and backward as ``torch.library`` ops.

``bitlower::binary_attention_fwd`` and ``bitlower::binary_attention_bwd`` are
``triton_op``s: under ``torch.compile`` Inductor traces into their bodies, so the CPU path
compiles the reference (``bitlower.reference``) and the CUDA path launches the Triton
kernels of ``bitlower.codegen`` where they support the call, falling back to the reference
(logged and counted) where they do not. Callers never choose the implementation.

Fallback counting (``bitlower.counters["fallback"][reason]``, one key for every source):
- an eager call on CUDA tensors that takes the reference counts once, each call;
- under ``torch.compile(backend="bitlower")`` the backend counts each operator call site of every
  graph Dynamo compiles (``bitlower.passes.kernel_fallback``), before Inductor's caches are
  consulted, so warm and cold compiles count alike, and marks the call's ``kernel_options``
  ``counted``: its bodies AOTAutograd traces on fake tensors do not count again;
- under another backend a traced body still counts, once per trace: a cache hit skips the trace.

The forward returns, besides the output, what the backward needs: the log-sum-exp, the
packed sign bits, the packed STE clip bits, the effective weighting scalars and the row state
(row maximum and log2 of the row sum, apart: ``bitlower.reference.row_state``). The
backward recomputes the scores from those bits; it never sees the float q and k.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from bitlower import autograd, reference, reference_backward
from bitlower.counters import counters
from bitlower.output_layout import in_output_layout, new_output
from bitlower.packing import num_words
from bitlower.spec import CallSpec

log = logging.getLogger(__name__)

FWD_OUTPUTS = ("out", "lse", "qbits", "kbits", "qclip", "kclip", "a", "b", "row_state")


make_spec = CallSpec.from_op_args  # the one conversion from the operators' flat arguments


def _drop_bits(outputs, spec: CallSpec):
    """With ``save_bits`` False the four packed outputs have 0 words (fresh tensors, no aliasing)."""
    if spec.save_bits:
        return outputs
    out, lse, qbits, kbits, qclip, kclip, a, b, row_state = outputs
    empty = [x.new_empty(*x.shape[:-1], 0) for x in (qbits, kbits, qclip, kclip)]
    return (out, lse, *empty, a, b, row_state)


def fallback_reason(check: str, tensors, spec: CallSpec, kernel_options: str = "", **extra) -> str | None:
    """Why the kernels will not run this call (codegen's ``check``, i.e. ``codegen.plan``), or None.

    None on CPU too: the reference is the CPU path, not a fallback. ``tensors`` may be fake.
    ``kernel_options``: the operator's argument (``codegen.plan.KernelOptions.encode()``).
    """
    if not tensors[0].is_cuda:
        return None
    from bitlower import codegen

    return getattr(codegen, check)(*tensors, spec, codegen.KernelOptions.decode(kernel_options), **extra)


_PLANS = {"unsupported_reason": "forward_plan_for", "unsupported_backward_reason": "backward_plan_for"}


def _kernels_for(check: str, tensors, spec: CallSpec, kernel_options: str = "", **extra):
    """The kernel plan (``codegen.plan``) when the kernels cover this CUDA call, else None (fallback counted).

    ``check`` names the question (``"unsupported_reason"``: forward, ``"unsupported_backward_reason"``).
    """
    if not tensors[0].is_cuda:
        return None
    from bitlower import codegen

    options = codegen.KernelOptions.decode(kernel_options)
    plan = getattr(codegen.support, _PLANS[check])(*tensors, spec, options, **extra)
    if not isinstance(plan, str):
        return plan
    reason = plan
    if not (options.counted and is_fake(tensors[0])):  # else the bitlower backend counted it
        counters["fallback"][reason] += 1
        log.info("bitlower: reference path on CUDA: %s", reason)
    return None


@torch.library.triton_op("bitlower::binary_attention_fwd", mutates_args=())
def binary_attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Optional[Tensor],
    b: Optional[Tensor],
    bias: Optional[Tensor],
    scale: float,
    weighting: str,
    bias_kind: str,
    grid: list[int],
    grad_mode: str,
    pv_quant: str,
    ste_clip: float,
    save_bits: bool = True,
    kernel_options: str = "",
    source: str = "",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Binary attention forward; see ``bitlower.reference.forward`` for the outputs.

    ``kernel_options``: overrides of the kernel plan (``codegen.plan.KernelOptions.encode()``); an
    argument, so Inductor's caches key it. ``source``: ``source_hash.SOURCE_HASH`` from bitlower's callers
    (unused here; it makes the cached graphs that call the operator version-specific, the backward with them).
    """
    spec = make_spec(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip, save_bits)
    plan = _kernels_for("unsupported_reason", (q, k, v, a, b, bias), spec, kernel_options)
    if plan is not None:
        from bitlower import codegen

        return _drop_bits(codegen.forward(q, k, v, a, b, bias, spec, plan=plan), spec)
    out, *rest = reference.forward(q, k, v, a, b, bias, spec)
    return _drop_bits((in_output_layout(out), *rest), spec)  # the kernels' output layout on every path


@binary_attention_fwd.register_fake
def _binary_attention_fwd_fake(q, k, v, a, b, bias, scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip,
                               save_bits=True, kernel_options="", source=""):
    spec = make_spec(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip, save_bits)
    bsz, heads, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    planes, words = spec.planes, num_words(q.shape[-1]) if save_bits else 0
    clip_words = words if spec.saves_clip_bits else 0
    acc = reference.compute_dtype(q.dtype)
    return (
        new_output(bsz, heads, n, v.shape[-1], like=v),
        q.new_empty(bsz, heads, n, dtype=acc),
        q.new_empty(bsz, heads, n, planes, words, dtype=torch.int32),
        q.new_empty(bsz, heads, m, planes, words, dtype=torch.int32),
        q.new_empty(bsz, heads, n, planes, clip_words, dtype=torch.int32),
        q.new_empty(bsz, heads, m, planes, clip_words, dtype=torch.int32),
        q.new_empty(bsz, heads, n, planes, dtype=acc),
        q.new_empty(bsz, heads, m, planes, dtype=acc),
        q.new_empty(bsz, heads, n, 2, dtype=acc),
    )


@torch.library.triton_op("bitlower::binary_attention_bwd", mutates_args=())
def binary_attention_bwd(
    grad_out: Tensor,
    v: Tensor,
    bias: Optional[Tensor],
    lse: Tensor,
    qbits: Tensor,
    kbits: Tensor,
    qclip: Tensor,
    kclip: Tensor,
    a: Tensor,
    b: Tensor,
    row_state: Tensor,
    scale: float,
    weighting: str,
    bias_kind: str,
    grid: list[int],
    grad_mode: str,
    pv_quant: str,
    ste_clip: float,
    head_dim: int,
    needs: list[bool],
    out: Optional[Tensor] = None,
    kernel_options: str = "",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Binary attention backward: ``(dq, dk, dv, da, db, dbias)``; unneeded ones are empty; dq, dk, dv in v's
    dtype and ``output_layout``'s ``(B, L, H, D)`` storage on every path.

    ``out``: the forward's output; the kernels then take ``delta_i = dO_i . O_i`` from it.
    """
    spec = make_spec(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    saved = (lse, qbits, kbits, qclip, kclip, a, b, row_state)
    plan = _kernels_for("unsupported_backward_reason", (grad_out, v, bias) + saved, spec, kernel_options,
                        head_dim=head_dim)
    if plan is not None:
        from bitlower import codegen

        grads = codegen.backward(grad_out, v, bias, *saved, spec, head_dim, needs, out=out, kernel_plan=plan)
    else:
        grads = reference_backward.backward(grad_out, v, bias, *saved, spec, head_dim, needs)
    grads = [None if g is None else in_output_layout(g, v.dtype) for g in grads[:3]] + list(grads[3:])
    return tuple(grad_out.new_empty(0) if g is None else g for g in grads)


@binary_attention_bwd.register_fake
def _binary_attention_bwd_fake(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, scale, weighting,
                               bias_kind, grid, grad_mode, pv_quant, ste_clip, head_dim, needs, out=None,
                               kernel_options=""):
    bsz, heads, n, m = grad_out.shape[0], grad_out.shape[1], qbits.shape[2], kbits.shape[2]
    acc = a.dtype
    spec = make_spec(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    qk_grad, bias_grad = spec.qk_grad, bias is not None and spec.bias_grad
    inputs = [(n, head_dim, needs[0] and qk_grad), (m, head_dim, needs[1] and qk_grad), (m, v.shape[-1], needs[2])]
    grads = [new_output(bsz, heads, length, dim, like=v) if need else grad_out.new_empty(0)
             for length, dim, need in inputs]
    rest = (
        (tuple(a.shape), acc, needs[3]),
        (tuple(b.shape), acc, needs[4]),
        (tuple(bias.shape) if bias_grad else (0,), bias.dtype if bias_grad else acc, needs[5] and bias_grad),
    )
    shapes = [shape if need else (0,) for shape, _, need in rest]
    dtypes = [dtype if need else grad_out.dtype for _, dtype, need in rest]
    return tuple(grads) + tuple(grad_out.new_empty(s, dtype=d) for s, d in zip(shapes, dtypes))


autograd.register(binary_attention_fwd)  # the backward lives with the operator: no import elsewhere registers it

# The overloads graph passes insert and look for (``bitlower.passes``): importing this module defines them.
FWD_OPERATOR = torch.ops.bitlower.binary_attention_fwd.default
BWD_OPERATOR = torch.ops.bitlower.binary_attention_bwd.default
