"""The Hopper Gluon forward as an opaque operator, ``bitlower::hopper_fwd``, and the plan's adapter.

The Gluon kernel is launched directly (host ``TensorDescriptor``s, ``kernel[grid](...)``), not through
``torch.library.wrap_triton``, so it cannot run on the fake tensors of the ``triton_op`` body that
Inductor traces (``bitlower::binary_attention_fwd``). ``hopper_fwd`` is an opaque CUDA operator
(``opaque.cuda_operator``: no Python dispatch layers per call): traced, it is one opaque node whose
fake implementation gives the launcher's output metadata; run, it calls
``launcher.launch_hopper_forward``. The call spec crosses as the op's flat arguments
(``CallSpec.op_args`` / ``CallSpec.from_op_args``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from bitlower.output_layout import new_output
from bitlower.packing import num_words
from bitlower.spec import CallSpec

from .launcher import launch_hopper_forward, launch_hopper_main, stats_pass
from .opaque import cuda_operator
from bitlower.source_hash import SOURCE_HASH


def run_flat(
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
    save_bits: bool,
    static_max: bool,
    source: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op's (CUDA) implementation: ``launch_hopper_forward`` on the spec of the flat arguments.

    The arguments after the tensors are ``spec.OP_ARGS``, then ``save_bits``, ``static_max`` and ``source``
    (``source_hash.SOURCE_HASH``: unused here; the fake's output strides are not part of the graph Inductor's
    FX graph cache keys, the argument is, so a warm cache never replays another version's wrapper).
    """
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip, save_bits)
    return launch_hopper_forward(q, k, v, a, b, bias, spec, static_max=static_max)


@cuda_operator("hopper_fwd", run_flat)  # defines bitlower::hopper_fwd; this is its fake
def _hopper_fwd_fake(q, k, v, a, b, bias, scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip,
                     save_bits, static_max, source):
    """The launcher's outputs, fresh tensors (``launch_hopper_forward``, ``stats.head_stats``).

    out ``(B, H, N, Dv)`` in v's dtype, ``(B, N, H, Dv)`` storage (``output_layout``); the rest contiguous:
    lse ``(B, H, N)`` float32; bits ``(B, H, L, 1, W)`` int32 with ``W = num_words(D)`` when ``save_bits``
    else 0, clip bits ``W`` words only for ``ste``; a_eff / b_eff ``(B, H, L, 1)`` float32; row_state
    ``(B, H, N, 2)`` float32.
    """
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip, save_bits)
    bsz, heads, n, dim = q.shape
    m = k.shape[2]
    words = num_words(dim) if save_bits else 0
    clip_words = words if spec.saves_clip_bits else 0
    f32, i32 = dict(dtype=torch.float32), dict(dtype=torch.int32)
    return (
        new_output(bsz, heads, n, v.shape[-1], like=v),
        q.new_empty(bsz, heads, n, **f32),
        q.new_empty(bsz, heads, n, 1, words, **i32),
        q.new_empty(bsz, heads, m, 1, words, **i32),
        q.new_empty(bsz, heads, n, 1, clip_words, **i32),
        q.new_empty(bsz, heads, m, 1, clip_words, **i32),
        q.new_empty(bsz, heads, n, 1, **f32),
        q.new_empty(bsz, heads, m, 1, **f32),
        q.new_empty(bsz, heads, n, 2, **f32),
    )


def run_main_flat(
    q_signs: Tensor,
    k_signs: Tensor,
    a_rows: Optional[Tensor],
    b_rows: Optional[Tensor],
    q_sums: Optional[Tensor],
    k_sums: Optional[Tensor],
    b_max: Optional[Tensor],
    v: Tensor,
    bias: Optional[Tensor],
    dim: int,
    scale: float,
    weighting: str,
    bias_kind: str,
    grid: list[int],
    grad_mode: str,
    pv_quant: str,
    ste_clip: float,
    static_max: bool,
    source: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``bitlower::hopper_main``'s (CUDA) implementation: ``launch_hopper_main`` on the stats pass's outputs
    (``stats_pass``, traced before it); flat arguments as ``run_flat``'s."""
    spec = CallSpec.from_op_args(scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip)
    return launch_hopper_main(q_signs, k_signs, a_rows, b_rows, q_sums, k_sums, b_max, v, bias, spec, dim,
                              static_max=static_max)


@cuda_operator("hopper_main", run_main_flat)  # defines bitlower::hopper_main; this is its fake
def _hopper_main_fake(q_signs, k_signs, a_rows, b_rows, q_sums, k_sums, b_max, v, bias, dim, scale, weighting,
                      bias_kind, grid, grad_mode, pv_quant, ste_clip, static_max, source):
    """``launch_hopper_main``'s outputs: out ``(B, H, N, Dv)`` in ``(B, N, H, Dv)`` storage, lse ``(B, H, N)``,
    a_eff / b_eff ``(B, H, L, 1)`` for mean_abs else 0 elements, row_state ``(B, H, N, 2)``, float32."""
    bsz, heads, n, _ = q_signs.shape
    m = k_signs.shape[2]
    f32 = dict(dtype=torch.float32)
    mean_abs = weighting == "mean_abs"
    return (
        new_output(bsz, heads, n, v.shape[-1], like=v),
        v.new_empty(bsz, heads, n, **f32),
        v.new_empty(bsz, heads, n, 1, **f32) if mean_abs else v.new_empty(0, **f32),
        v.new_empty(bsz, heads, m, 1, **f32) if mean_abs else v.new_empty(0, **f32),
        v.new_empty(bsz, heads, n, 2, **f32),
    )


def _hopper_forward_in_graph(q, k, v, a, b, bias, spec, static_max: bool):
    """The stats pass as traced kernels (Inductor launches them), then ``bitlower::hopper_main``."""
    stats = stats_pass(q, k, a, b, spec)  # as ``launch_hopper_forward``, the main launch as the opaque op
    main = torch.ops.bitlower.hopper_main(*stats.main_operands(), v, bias, q.shape[-1], *spec.op_args(), static_max,
                                          SOURCE_HASH)
    return stats.outputs(*main, spec)


def hopper_forward(q, k, v, a, b, bias, spec, plan):
    """``codegen.forward``'s ``"hopper"`` branch: the plan accepted the call (``support.hopper_forward_unsupported``).

    ``plan.static_max`` crosses as the op's ``static_max``; ``plan.tiles`` (the tl.dot table's) are not
    the Gluon kernel's: its tiles come from ``config.hopper_config``. ``plan.stats_in_graph``: the stats pass
    runs as traced kernels before ``bitlower::hopper_main`` instead of inside ``bitlower::hopper_fwd``.

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)`` (bits with 0 words unless
        ``spec.save_bits``).
    """
    if plan.stats_in_graph:
        return _hopper_forward_in_graph(q, k, v, a, b, bias, spec, plan.static_max)
    return tuple(torch.ops.bitlower.hopper_fwd(q, k, v, a, b, bias, *spec.op_args(), spec.save_bits,
                                               plan.static_max, SOURCE_HASH))
