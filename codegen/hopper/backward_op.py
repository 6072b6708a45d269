"""The Hopper Gluon backward's kernels as an opaque operator, ``bitlower::hopper_bwd``, and the plan's adapter.

As ``op.hopper_fwd``: the Gluon kernels are launched directly (host ``TensorDescriptor``s), so they cannot run
on the fake tensors of the ``triton_op`` body Inductor traces (``bitlower::binary_attention_bwd``).
``hopper_bwd`` is an opaque CUDA operator (``opaque.cuda_operator``) around stage 2 of the launcher,
``backward_launcher.launch_backward_kernels``, alone: stages 1 and 3 (row dots, sign tiles, staged rows; dq / dk
from the raw sums, the bias gradient's shape) are traced around it, so under ``torch.compile`` Inductor launches
their kernels (its launcher, not Triton's JIT binder: ~100 us of host time per launch on the H200 machine) and
fuses their PyTorch ops. Raw outputs that are not made cross as empty ``(0,)`` tensors (the operator's
convention).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from bitlower.output_layout import new_output
from bitlower.source_hash import SOURCE_HASH
from bitlower.spec import CallSpec

from .backward_launcher import (backward_config, backward_operands, finish_gradients, launch_backward_kernels,
                                raw_shapes)
from .opaque import cuda_operator


def run_flat(
    grad_out: Tensor,
    v: Tensor,
    bias: Optional[Tensor],
    q_signs: Tensor,
    k_signs: Tensor,
    delta: Tensor,
    rows: Optional[Tensor],
    row_state: Tensor,
    a: Tensor,
    b: Tensor,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op's (CUDA) implementation: ``launch_backward_kernels``; a raw output not made is ``empty(0)``."""
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    cfg = backward_config(delta, v, head_dim, spec)
    raw = launch_backward_kernels(grad_out, q_signs, k_signs, delta, rows, v, bias, row_state, a, b, spec, head_dim,
                                  list(needs), cfg)
    return tuple(grad_out.new_empty(0) if r is None else r for r in raw)


@cuda_operator("hopper_bwd", run_flat)  # defines bitlower::hopper_bwd; this is its fake
def _hopper_bwd_fake(grad_out, v, bias, q_signs, k_signs, delta, rows, row_state, a, b, scale, weighting, bias_kind,
                     grid, grad_mode, pv_quant, ste_clip, head_dim, needs, source):
    """Fresh raw outputs of ``raw_shapes`` (dv in the output layout, the rest contiguous); ``(0,)`` where not made."""
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    shapes = raw_shapes(grad_out, v, bias, spec, head_dim, needs)
    raw = [grad_out.new_empty(0) if s is None else grad_out.new_empty(s[0], dtype=s[1]) for s in shapes]
    if shapes[0] is not None:
        raw[0] = new_output(*shapes[0][0], like=v)
    return tuple(raw)


def wanted_shapes(grad_out, v, bias, a, b, spec, head_dim: int, needs) -> list:
    """``(shape, dtype)`` of each gradient ``hopper_backward`` returns, None where it returns None (dq, dk, dv in
    the output layout)."""
    bsz, heads, n = grad_out.shape[:3]
    m = v.shape[2]
    chain_q = needs[0] and spec.qk_grad
    chain_k = needs[1] and spec.qk_grad
    bias_grad = needs[5] and spec.bias_kind in ("head", "dense", "table")
    return [
        ((bsz, heads, n, head_dim), v.dtype) if chain_q else None,
        ((bsz, heads, m, head_dim), v.dtype) if chain_k else None,
        (tuple(v.shape), v.dtype) if needs[2] else None,
        ((bsz, heads, n, 1), torch.float32) if needs[3] else None,
        ((bsz, heads, m, 1), torch.float32) if needs[4] else None,
        (tuple(bias.shape), bias.dtype) if bias_grad else None,
    ]


def hopper_backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, head_dim, needs,
                    *, out):
    """``codegen.backward``'s ``"hopper"`` branch (``BackwardPlan.kernel == "hopper"``): the launcher's stages 1
    and 3 around ``bitlower::hopper_bwd``.

    Returns:
        ``(dq, dk, dv, da, db, dbias)``, None where not needed or the mode gives none.

    Raises:
        ValueError: ``out`` is None (the Gluon backward takes ``delta_i = dO_i . O_i`` from it).
    """
    needs = [bool(x) for x in needs]
    cfg = backward_config(lse, v, head_dim, spec)
    go, q_signs, k_signs, delta, rows = backward_operands(grad_out, v, bias, lse, qbits, kbits, a, row_state, spec,
                                                          head_dim, needs, out, cfg)
    raw = torch.ops.bitlower.hopper_bwd(go, v, bias, q_signs, k_signs, delta, rows, row_state, a, b, *spec.op_args(),
                                        head_dim, needs, SOURCE_HASH)
    shapes = raw_shapes(grad_out, v, bias, spec, head_dim, needs)
    raw = [None if s is None else r for r, s in zip(raw, shapes)]
    return finish_gradients(raw, a, b, qclip, kclip, qbits, kbits, bias, spec, head_dim, needs, v)
