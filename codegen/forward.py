"""Launcher of the binary-attention forward: asks the plan, runs the v1 prologue and kernel, or hands on.

``forward`` is the entry of every forward launch: it takes the call's ``ForwardPlan`` (or asks
``plan.plan_forward`` for one) and runs the kernel family it names: ``"v1"`` here, ``"v2"`` in
``forward_v2``, ``"hopper"`` in ``codegen/hopper`` (``hopper_forward``).
"""
from __future__ import annotations

import torch
import triton

from .configs import DEFAULT_LIMIT, STATIC_LIMIT, padded_dim
from .forward_kernel import _binary_attn_fwd_kernel
from .forward_v2 import forward_v2
from .operands import bias_operand, value_scales
from .plan import ForwardPlan, KernelOptions, forward_plan
from .prologue import sign_pack
from .tiles import LOG2E


def forward(q, k, v, a, b, bias, spec, options: KernelOptions | None = None, *, plan: ForwardPlan | None = None,
            variant: str | None = None, config=None, static_max: bool = True):
    """Fused forward with the contract of ``bitlower.reference.forward``.

    Args:
        q, k, v: ``(B, H, N, D)``, ``(B, H, M, D)``, ``(B, H, M, Dv)``; any strides; one dtype
            among float16/bfloat16/float32 (``plan.plan_forward`` checks the call).
        a, b: ``(B, H, N)`` / ``(B, H, M)`` scalars for ``token`` weighting, else None.
        bias: the bias of ``spec.bias_kind``.
        spec: the call's ``CallSpec``.
        options: the call's ``KernelOptions`` (the operator's ``kernel_options``).
        plan: a ``ForwardPlan`` already made for this call (else made here from ``options``).
        variant, config, static_max: shorthands for ``KernelOptions(forward=variant,
            forward_tiles=config.text, static_max=static_max)`` (tests, benchmarks).

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)`` as the reference (v2: bits with 0 words
        unless ``spec.save_bits``).
    """
    if plan is None:
        if options is None:
            options = KernelOptions(forward=variant or "auto", forward_tiles=config.text if config else "",
                                    static_max=static_max)
        plan = forward_plan(q, k, v, bias, spec, options)
    if plan.kernel == "v2":
        return forward_v2(q, k, v, a, b, bias, spec, plan)
    if plan.kernel == "hopper":
        from .hopper import hopper_forward

        return hopper_forward(q, k, v, a, b, bias, spec, plan)
    return _forward_v1(q, k, v, a, b, bias, spec, plan)


def _forward_v1(q, k, v, a, b, bias, spec, plan: ForwardPlan):
    """Prologue (signs, bits, sums) of q and k, then the v1 kernel."""
    bsz, heads, n, dim = q.shape
    m, dim_v = k.shape[2], v.shape[-1]
    qbits, qclip, q_signs, a_eff, q_sums = sign_pack(q, a, spec, signs=True)
    kbits, kclip, ks, b_eff, k_sums = sign_pack(k, b, spec, signs=True)
    out = torch.empty(bsz, heads, n, dim_v, dtype=v.dtype, device=v.device)
    lse = torch.empty(bsz, heads, n, dtype=torch.float32, device=q.device)
    row_state = torch.empty(bsz, heads, n, 2, dtype=torch.float32, device=q.device)  # (m2, log2 l) per row
    beta = bias_operand(bias, spec, (bsz, heads, n, m))
    cfg = plan.tiles
    pv_int8 = spec.pv_quant == "int8"
    vscale, vstep = value_scales(v) if pv_int8 else (lse, lse)
    dp, dvp = padded_dim(dim), padded_dim(dim_v)
    limit, offset = STATIC_LIMIT.get(v.dtype, DEFAULT_LIMIT)
    grid = (triton.cdiv(n, cfg.block_n), bsz * heads)
    torch.library.wrap_triton(_binary_attn_fwd_kernel)[grid](
        q_signs, ks, v, out, lse, row_state, a_eff, b_eff, q_sums, k_sums,
        beta.tensor if beta.tensor is not None else lse, vscale, vstep,
        n * q_signs.shape[-1], q_signs.shape[-1], m * ks.shape[-1], ks.shape[-1],
        *v.stride(), *beta.strides,
        heads, n, m, spec.scale * LOG2E.value, 1.0 / (n * dim), 1.0 / (m * dim), beta.rows, *beta.grid,
        D=dim, DP=dp, DV=dim_v, DVP=dvp, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m,
        MEAN_ABS=spec.weighting == "mean_abs", BIAS=beta.code, HAS_PREFIX=beta.has_prefix,
        STATIC_MAX=plan.static_max, LIMIT=limit, P_OFFSET=offset,
        PV_INT8=pv_int8, DOT=plan.dot,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state
