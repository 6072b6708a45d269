"""Launcher of the binary-attention forward: asks the plan, runs the stats pass and the tl.dot kernel, or hands on.

``forward`` is the entry of every forward launch: it takes the call's ``ForwardPlan`` (or asks
``plan.plan_forward`` for one) and runs the kernel it names: ``"v1"`` and ``"v2"`` are the two option
sets (``OPTION_SETS``) of the one tl.dot kernel ``forward_kernel._binary_attn_fwd_kernel``;
``"hopper"`` is the Gluon forward of ``codegen/hopper`` (``hopper_forward``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .configs import DEFAULT_LIMIT, STATIC_LIMIT
from .forward_kernel import SCALARS_GIVEN, SCALARS_IN_KERNEL, _binary_attn_fwd_kernel
from .launch import launch
from .operands import BiasOperand, bias_operand, dense_table, uses_dense_table, value_scales
from .plan import ForwardPlan, KernelOptions, forward_plan
from .stats import pair_stats
from bitlower.output_layout import new_output
from .tiles import BIAS_CODES, LOG2E, operand_alignment


@dataclass(frozen=True)
class OptionSet:
    """One named option set of ``_binary_attn_fwd_kernel`` (the kernel's module notation says what each does).

    Attributes:
        scalars: ``SCALARS_IN_KERNEL`` or ``SCALARS_GIVEN``: who reduces the static bound's maxima.
        sign_strides: the sign tensors' strides are kernel arguments (else compile-time).
        dense_table: a table bias may be materialised as a dense tile (``operands.uses_dense_table``).
        pv_int8: covers ``pv_quant == "int8"``.
        word_loads: the stats pass reads 32-channel words (``stats.LOAD_WORDS``; bits always written),
            else whole ``(rows, DP)`` tiles (bits only for ``spec.save_bits``).
    """

    scalars: int
    sign_strides: bool
    dense_table: bool
    pv_int8: bool
    word_loads: bool


# measured per shape in benchmarks/kernel_notes.md (rounds 2 and 4); ``plan.auto_forward`` picks the name
OPTION_SETS = {
    "v1": OptionSet(SCALARS_IN_KERNEL.value, sign_strides=True, dense_table=False, pv_int8=True, word_loads=True),
    "v2": OptionSet(SCALARS_GIVEN.value, sign_strides=False, dense_table=True, pv_int8=False, word_loads=False),
}


def forward(q, k, v, a, b, bias, spec, options: KernelOptions | None = None, *, plan: ForwardPlan | None = None,
            variant: str | None = None, config=None, static_max: bool = True, table_dense: bool | None = None):
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
        table_dense: "v2" only: materialise a table bias densely (None: ``operands.uses_dense_table``).

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)`` as the reference, except that
        with "v2" the four packed outputs have 0 words unless ``spec.save_bits`` (the operator drops
        them then; "v1" writes them always).
    """
    if plan is None:
        if options is None:
            options = KernelOptions(forward=variant or "auto", forward_tiles=config.text if config else "",
                                    static_max=static_max)
        plan = forward_plan(q, k, v, bias, spec, options)
    if plan.kernel == "hopper":
        from .hopper import hopper_forward

        return hopper_forward(q, k, v, a, b, bias, spec, plan)
    return forward_tl_dot(q, k, v, a, b, bias, spec, plan, table_dense=table_dense)


def _bias(bias, spec, shape4, opts: OptionSet, table_dense: bool | None):
    """``(BiasOperand, beta_max or None)``: beta_max ``(H,)`` float32 max |beta| in log2 units (``SCALARS_GIVEN``)."""
    if spec.bias_kind != "table" or opts.scalars == SCALARS_IN_KERNEL:
        return bias_operand(bias, spec, shape4), None
    beta_max = (bias.to(torch.float32).abs().amax(dim=0) * LOG2E.value).contiguous()  # (H,)
    bsz, heads, n, m = shape4
    if table_dense is None:
        table_dense = opts.dense_table and uses_dense_table(heads, n, m)
    if not table_dense:
        return bias_operand(bias, spec, shape4), beta_max
    view = dense_table(bias, spec.grid, n).expand(shape4)  # (B, H, N, M), stride 0 on B
    return BiasOperand(BIAS_CODES["dense"], view, tuple(view.stride()), 0, (0, 0, 0)), beta_max


def forward_tl_dot(q, k, v, a, b, bias, spec, plan: ForwardPlan, *, table_dense: bool | None = None):
    """Stats pass of q and k, bias operand, then ``_binary_attn_fwd_kernel`` with the plan's option set.

    Raises:
        ValueError: the option set does not cover the call's ``pv_quant``.
    """
    opts = OPTION_SETS[plan.kernel]
    pv_int8 = spec.pv_quant == "int8"
    if pv_int8 and not opts.pv_int8:
        raise ValueError(f"forward option set {plan.kernel!r} covers pv_quant 'none' only")
    bsz, heads, n, dim = q.shape
    m, dim_v = k.shape[2], v.shape[-1]
    mean_abs = spec.weighting == "mean_abs"
    given = opts.scalars == SCALARS_GIVEN
    f32 = dict(dtype=torch.float32, device=q.device)
    eff = not (given and mean_abs)  # SCALARS_IN_KERNEL scales eff (1 or NaN) by the head mean
    # v2: max |eff| of q and k whenever eff (only k's is read); v1 reduces max |b| in the kernel
    stats = dict(eff=eff, signs=True, word_loads=opts.word_loads, dim_p=plan.dim_p)
    (qbits, qclip, a_rows, q_sums, _, q_signs), (kbits, kclip, b_rows, k_sums, b_max, k_signs) = pair_stats(
        q, k, a, b, spec, **stats)
    a_eff = torch.empty(bsz, heads, n, 1, **f32) if a_rows is None else a_rows
    b_eff = torch.empty(bsz, heads, m, 1, **f32) if b_rows is None else b_rows
    beta, beta_max = _bias(bias, spec, (bsz, heads, n, m), opts, table_dense)
    out = new_output(bsz, heads, n, dim_v, like=v)  # (B, N, H, Dv) storage, as SDPA's
    lse = torch.empty(bsz, heads, n, **f32)
    row_state = torch.empty(bsz, heads, n, 2, **f32)  # (m2, log2 l) per row
    pick = lambda t: lse if t is None else t  # noqa: E731 - a pointer the kernel does not read
    dp = plan.dim_p
    if given:  # arguments of the other option set: None (constexpr)
        b_max, beta_max_t, (vscale, vstep), sign_strides = pick(b_max), pick(beta_max), (None, None), (None,) * 4
    else:
        b_max, beta_max_t, sign_strides = None, None, (n * dp, dp, m * dp, dp)  # (B, H, L, DP) int8
        vscale, vstep = value_scales(v) if pv_int8 else (lse, lse)
    cfg = plan.tiles
    limit, offset = STATIC_LIMIT.get(v.dtype, DEFAULT_LIMIT)
    launch(_binary_attn_fwd_kernel, (triton.cdiv(n, cfg.block_n), bsz * heads),
        q_signs, k_signs, v, out, lse, row_state, a_eff, b_eff, pick(q_sums), pick(k_sums), b_max,
        pick(beta.tensor), beta_max_t, vscale, vstep, *sign_strides, *v.stride(), *out.stride()[:3], *beta.strides,
        heads, n, m, spec.scale * LOG2E.value, 1.0 / (n * dim), 1.0 / (m * dim), beta.rows, *beta.grid,
        D=dim, DP=dp, DV=dim_v, DVP=plan.dim_vp, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m,
        MEAN_ABS=mean_abs, BIAS=beta.code, HAS_PREFIX=beta.has_prefix, STATIC_MAX=plan.static_max,
        LIMIT=limit, P_OFFSET=offset, DOT=plan.dot, SCALARS=opts.scalars, SIGN_STRIDES=opts.sign_strides,
        BETA_MAX=beta_max is not None, PV_INT8=pv_int8, ROW_ALIGN=operand_alignment(v, out),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state
