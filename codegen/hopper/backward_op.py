"""The Hopper Gluon backward as an opaque operator, ``bitlower::hopper_bwd``, and the plan's adapter.

As ``op.hopper_fwd``: the Gluon kernel is launched directly (host ``TensorDescriptor``s), so it cannot run
on the fake tensors of the ``triton_op`` body Inductor traces (``bitlower::binary_attention_bwd``).
``hopper_bwd`` is an opaque CUDA operator (``opaque.cuda_operator``): traced, one opaque node whose fake
implementation gives the launcher's output metadata; run, ``backward_launcher.launch_hopper_backward``.
Gradients that are not wanted cross as empty ``(0,)`` tensors (the operator's convention) and come back
as None from :func:`hopper_backward`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from bitlower.spec import CallSpec

from .backward_launcher import launch_hopper_backward
from .opaque import cuda_operator
from bitlower.source_hash import SOURCE_HASH


def run_flat(
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
    out: Tensor,
    scale: float,
    weighting: str,
    bias_kind: str,
    grid: list[int],
    grad_mode: str,
    pv_quant: str,
    ste_clip: float,
    head_dim: int,
    needs: list[bool],
    source: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op's (CUDA) implementation: ``launch_hopper_backward``; an unwanted gradient is ``empty(0)``."""
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    grads = launch_hopper_backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec,
                                   head_dim, list(needs), out=out)
    return tuple(grad_out.new_empty(0) if g is None else g for g in grads)




def wanted_shapes(grad_out, v, bias, a, b, spec, head_dim: int, needs) -> list:
    """``(shape, dtype)`` of each gradient the launcher returns, None where it returns None."""
    bsz, heads, n = grad_out.shape[:3]
    m = v.shape[2]
    chain_q = needs[0] and spec.qk_grad
    chain_k = needs[1] and spec.qk_grad
    bias_grad = needs[5] and spec.bias_kind in ("head", "dense", "table")
    return [
        ((bsz, heads, n, head_dim), torch.float32) if chain_q else None,
        ((bsz, heads, m, head_dim), torch.float32) if chain_k else None,
        (tuple(v.shape), v.dtype) if needs[2] else None,
        ((bsz, heads, n, 1), torch.float32) if needs[3] else None,
        ((bsz, heads, m, 1), torch.float32) if needs[4] else None,
        (tuple(bias.shape), bias.dtype) if bias_grad else None,
    ]


@cuda_operator("hopper_bwd", run_flat)  # defines bitlower::hopper_bwd; this is its fake
def _hopper_bwd_fake(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, out, scale, weighting,
                     bias_kind, grid, grad_mode, pv_quant, ste_clip, head_dim, needs, source):
    """Fresh contiguous gradients (``launch_hopper_backward``): dq/dk/da/db float32, dv in v's dtype
    ``(B, H, M, Dv)``, the bias gradient in the bias's shape and dtype; ``(0,)`` where not wanted."""
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    shapes = wanted_shapes(grad_out, v, bias, a, b, spec, head_dim, needs)
    return tuple(grad_out.new_empty(0) if s is None else grad_out.new_empty(s[0], dtype=s[1]) for s in shapes)


def hopper_backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, head_dim, needs,
                    *, out):
    """``codegen.backward``'s ``"hopper"`` branch (``BackwardPlan.kernel == "hopper"``).

    Returns:
        ``(dq, dk, dv, da, db, dbias)``, None where not needed or the mode gives none.

    Raises:
        ValueError: ``out`` is None (the Gluon backward takes ``delta_i = dO_i . O_i`` from it).
    """
    if out is None:
        raise ValueError("the Hopper backward needs out, the forward's output (delta_i = dO_i . O_i)")
    grads = torch.ops.bitlower.hopper_bwd(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, out,
                                          *spec.op_args(), head_dim, [bool(x) for x in needs], SOURCE_HASH)
    shapes = wanted_shapes(grad_out, v, bias, a, b, spec, head_dim, needs)
    return tuple(None if s is None else g for g, s in zip(grads, shapes))
