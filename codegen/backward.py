"""Launcher of the binary-attention backward: which kernels run, strides, grids, gradient assembly.

Kernel here (the two attention kernels are in ``backward_kernels``; the saved packed bits become int8 signs in
``sign_unpack``, q's and k's in one launch): ``_sign_chain_kernel`` adds the ``mean_abs`` chain term and stores
dq / dk in v's dtype and the output layout, both in one launch, program = (row block, batch*head, side), no
communication between programs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitlower.output_layout import new_output

from .backward_kernels import _binary_attn_bwd_k_kernel, _binary_attn_bwd_q_kernel, _row_dot_kernel
from .configs import PROLOGUE_ROWS, padded_dim
from .launch import launch
from .operands import bias_operand, value_scales
from .plan import BackwardPlan, CallFacts, DeviceFacts, KernelOptions, plan_backward
from .sign_unpack import unpack_sign_pair
from .tiles import BIAS_CODES, BIAS_DENSE, BIAS_HEAD, BIAS_NONE, BIAS_TABLE, LOG2E, operand_alignment

_NONE, _HEAD, _TABLE, _DENSE = BIAS_NONE.value, BIAS_HEAD.value, BIAS_TABLE.value, BIAS_DENSE.value


@dataclass(frozen=True)
class _Plan:
    """Which gradients the kernels form for one call (``needs`` folded with the mode) and where."""

    dq: bool  # the STE matrix term of dq
    dk: bool
    da: bool  # also for the mean_abs chain into dq
    db: bool
    dv: bool
    bias_grad: int  # bias code (tiles.BIAS_CODES) of the gradient formed: head (row sums), table, dense or none
    delta_given: bool  # delta_i = dO_i . O_i from the output, not from the query kernel
    da_by_keys: bool  # only sum_i da_i is needed (mean_abs chain): the key kernel forms it per key

    @property
    def da_rows(self) -> bool:
        return self.da and not self.da_by_keys

    @property
    def head_dbias(self) -> bool:
        """The query kernel sums dS per row (a head bias's gradient)."""
        return self.bias_grad == _HEAD

    @property
    def scattered_dbias(self) -> int:
        """``BIAS_GRAD`` of the key kernel: the table or dense code whose gradient it scatters, else none."""
        return self.bias_grad if self.bias_grad in (_TABLE, _DENSE) else _NONE

    @property
    def key_side(self) -> bool:
        return self.dv or self.db or self.dk or self.scattered_dbias != _NONE or self.da_by_keys

    @property
    def query_side(self) -> bool:
        if self.delta_given:
            return self.dq or self.da_rows or self.head_dbias
        return (self.dq or self.da or self.head_dbias or self.db or self.dk
                or self.scattered_dbias != _NONE)


def _plan(spec, needs, has_out: bool) -> _Plan:
    ste = spec.grad_mode == "ste"
    chain = spec.mean_abs_chain
    kind = spec.bias_kind
    bias_grad = BIAS_CODES[kind] if needs[5] and kind in ("head", "table", "dense") else _NONE
    dq = ste and needs[0]
    da = needs[3] or (chain and needs[0])
    delta_given = has_out and spec.pv_quant == "none"  # 8-bit P.V: O is not sum_j p_ij V_j
    return _Plan(
        dq=dq,
        dk=ste and needs[1],
        da=da,
        db=needs[4] or (chain and needs[1]),
        dv=needs[2],
        bias_grad=bias_grad,
        delta_given=delta_given,
        da_by_keys=(delta_given and da and not dq and not needs[3] and spec.weighting == "mean_abs"
                    and bias_grad != _HEAD),  # a head bias runs the query kernel anyway
    )


def unpack_signs(bits: torch.Tensor, dim: int, dim_p: int = 0) -> torch.Tensor:
    """int8 ``(B, H, L, DP)`` ``+-1`` signs (0 past ``dim``) from packed ``(B, H, L, 1, W)`` bits.

    ``dim_p``: DP (the plan's ``dim_p``; 0: ``configs.padded_dim(dim)``).
    """
    return unpack_sign_pair(bits, None, dim, torch.int8, dim_p)[0]


@triton.jit
def _sign_chain_side(grad_ptr, raw_ptr, signs_ptr, total_ptr, length, H, s_gb, s_gh, s_gn, inv_count,
                     D: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr, HAS_RAW: tl.constexpr,
                     MEAN_ABS: tl.constexpr):
    """grad = raw (``HAS_RAW``, float32 ``(B*H, L, D)``) + total[bh] * sgn / (L * D) (``MEAN_ABS``), stored in
    grad's dtype at strides ``(s_gb, s_gh, s_gn)``: this program's row block of batch*head ``program_id(1)``."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, DP)
    mask = (rows < length)[:, None] & (d < D)[None, :]
    term = tl.zeros((BLOCK_L, DP), dtype=tl.float32)
    if MEAN_ABS:
        sgn = tl.load(signs_ptr + (bh * length + rows)[:, None] * DP + d[None, :], mask=mask, other=0)
        term = sgn.to(tl.float32) * (tl.load(total_ptr + bh) * tl.cast(inv_count, tl.float32))
    if HAS_RAW:
        term += tl.load(raw_ptr + (bh * length + rows)[:, None] * D + d[None, :], mask=mask, other=0.0)
    base = grad_ptr + (bh // H) * s_gb + (bh % H) * s_gh
    tl.store(base + rows.to(tl.int64)[:, None] * s_gn + d[None, :], term.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sign_chain_kernel(grad_ptr, raw_ptr, signs_ptr, total_ptr, length, s_gb, s_gh, s_gn, inv_count, grad2_ptr,
                       raw2_ptr, signs2_ptr, total2_ptr, length2, s2_gb, s2_gh, s2_gn, inv2_count, H,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr, HAS_RAW: tl.constexpr,
                       HAS_RAW2: tl.constexpr, MEAN_ABS: tl.constexpr, SIDES: tl.constexpr):
    """Program ``(row block, batch*head, side)``: side 0 the first gradient, side 1 (``SIDES`` 2) the second
    (``_sign_chain_side``)."""
    if SIDES == 2 and tl.program_id(2) == 1:
        _sign_chain_side(grad2_ptr, raw2_ptr, signs2_ptr, total2_ptr, length2, H, s2_gb, s2_gh, s2_gn, inv2_count,
                         D, DP, BLOCK_L, HAS_RAW2, MEAN_ABS)
    else:
        _sign_chain_side(grad_ptr, raw_ptr, signs_ptr, total_ptr, length, H, s_gb, s_gh, s_gn, inv_count, D, DP,
                         BLOCK_L, HAS_RAW, MEAN_ABS)


def _with_chains(sides, dim: int, spec, like: torch.Tensor):
    """``(dq, dk)`` in ``like``'s dtype and ``output_layout``'s storage, the wanted ones in one launch: per side
    ``(raw, d_own, signs, need)``, the kernels' float32 sum ``raw`` (or None) plus the mean_abs chain
    ``sum_i da_i * sgn(q) / (L * D)``; None where not needed."""
    if not spec.qk_grad:
        return None, None
    mean_abs = spec.weighting == "mean_abs"
    grads, launched = [], []
    for raw, d_own, signs, need in sides:
        grad = new_output(*signs.shape[:3], dim, like=like) if need else None
        grads.append(grad)
        if grad is not None and raw is None and not mean_abs:
            grad.zero_()
        elif grad is not None:
            total = d_own.sum(dim=(2, 3)) if mean_abs else signs  # (B, H); unused without mean_abs
            length = grad.shape[2]
            launched.append((raw is not None, (grad, signs if raw is None else raw, signs, total, length,
                                               *grad.stride()[:3], 1.0 / (length * dim))))
    if launched:
        bsz, heads, _, dp = sides[0][2].shape
        rows = max(args[4] for _, args in launched)
        launch(_sign_chain_kernel, (triton.cdiv(rows, PROLOGUE_ROWS), bsz * heads, len(launched)),
            *launched[0][1], *launched[-1][1], heads, D=dim, DP=dp, BLOCK_L=PROLOGUE_ROWS, HAS_RAW=launched[0][0],
            HAS_RAW2=launched[-1][0], MEAN_ABS=mean_abs, SIDES=len(launched), num_warps=4,
        )
    return grads[0], grads[1]


def _row_dots(out, grad_out, lse):
    """delta ``(B, H, N)`` float32: ``dO_i . O_i`` per query row (0 where ``lse`` is -inf)."""
    bsz, heads, n, dim_v = out.shape
    delta = torch.empty(bsz, heads, n, dtype=torch.float32, device=out.device)
    launch(_row_dot_kernel, (triton.cdiv(n, PROLOGUE_ROWS), bsz * heads),
        out, grad_out, lse, delta, heads, n, *out.stride(), *grad_out.stride(),
        DV=dim_v, DVP=padded_dim(dim_v), BLOCK_N=PROLOGUE_ROWS,
        ROW_ALIGN=operand_alignment(out, grad_out), num_warps=4,
    )
    return delta


def backward_plan(grad_out, v, bias, head_dim: int, m: int, spec, options: KernelOptions) -> BackwardPlan:
    """The call's ``BackwardPlan``.

    Raises:
        ValueError: the kernels cannot run the call (the plan's reason; callers ask first).
    """
    bsz, heads, n, _ = grad_out.shape
    call = CallFacts(bsz, heads, n, m, head_dim, v.shape[-1], grad_out.dtype,
                     max(int(t.numel()) for t in (grad_out, v) + ((bias,) if bias is not None else ())),
                     any(int(t.numel()) == 0 for t in (grad_out, v)))
    plan = plan_backward(call, spec, DeviceFacts.of(grad_out.device), options)
    if isinstance(plan, str):
        raise ValueError(f"the fused backward cannot run this call: {plan}")
    return plan


def backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, head_dim, needs,
             options: KernelOptions | None = None, *, config=None, out=None, kernel_plan: BackwardPlan | None = None):
    """Fused backward with the contract of ``bitlower.reference_backward.backward``.

    Args:
        grad_out: ``(B, H, N, Dv)``; v, bias: the forward's inputs; lse, qbits, kbits, qclip, kclip,
            a, b, row_state: what the forward saved (the kernels form ``p`` from ``row_state``);
            spec: the ``CallSpec``; head_dim: ``D``; needs: six bools
            for ``(q, k, v, a_in, b_in, bias)``; options: the call's ``KernelOptions``; config: a
            ``TileConfig`` (shorthand for ``KernelOptions(backward_tiles=config.text)``); kernel_plan: a
            ``BackwardPlan`` already made (else made here from ``options``).
        out: the forward's output, or None. Given (and ``pv_quant`` "none"), ``delta_i = dO_i . O_i``
            replaces the query kernel's pass over the scores, and a ``mean_abs`` call without dq runs
            no query kernel at all (the chain's ``sum_i da_i`` comes from the key kernel).

    Returns:
        ``(dq, dk, dv, da, db, dbias)``, None where not needed or the mode gives none; dq, dk, dv in v's dtype
        and ``output_layout``'s ``(B, L, H, D)`` storage.
    """
    bsz, heads, n = lse.shape
    m, dim_v = v.shape[2], v.shape[-1]
    if options is None:
        options = KernelOptions(backward_tiles=config.text if config else "")
    kplan = kernel_plan or backward_plan(grad_out, v, bias, head_dim, m, spec, options)
    if kplan.kernel == "hopper" and out is not None:  # the Gluon backward takes delta_i = dO_i . O_i from out
        from .hopper.backward_op import hopper_backward

        return hopper_backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, head_dim,
                               needs, out=out)
    plan = _plan(spec, needs, out is not None)
    q_signs, k_signs = unpack_sign_pair(qbits, kbits, head_dim, torch.int8, kplan.dim_p)  # (B, H, L, DP) int8
    dev = v.device
    f32 = dict(dtype=torch.float32, device=dev)
    delta = _row_dots(out, grad_out, lse) if plan.delta_given else torch.empty(bsz, heads, n, **f32)
    da = torch.empty(bsz, heads, n, 1, **f32) if plan.da_rows else None
    da_cols = torch.empty(bsz, heads, m, 1, **f32) if plan.da_by_keys else None
    db = torch.empty(bsz, heads, m, 1, **f32) if plan.db else None
    dq = torch.empty(bsz, heads, n, head_dim, **f32) if plan.dq else None
    dk = torch.empty(bsz, heads, m, head_dim, **f32) if plan.dk else None
    dv = new_output(bsz, heads, m, dim_v, like=v) if plan.dv else None
    beta = bias_operand(bias, spec, (bsz, heads, n, m))
    vscale, vstep = value_scales(v) if spec.pv_quant == "int8" else (delta, delta)
    dp, dvp = kplan.dim_p, kplan.dim_vp
    cfg = kplan.tiles
    common = dict(
        D=head_dim, DP=dp, DV=dim_v, DVP=dvp, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, BIAS=beta.code,
        HAS_PREFIX=beta.has_prefix, PV_INT8=spec.pv_quant == "int8", DOT=kplan.dot,
        DS_DOT=kplan.ds_dot, ROW_ALIGN=operand_alignment(v, grad_out),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    bias_t = beta.tensor if beta.tensor is not None else delta
    rows_sum = torch.empty(bsz, heads, n, **f32) if plan.head_dbias else None
    sign_strides = (n * dp, dp, m * dp, dp)
    if plan.query_side:
        launch(_binary_attn_bwd_q_kernel, (triton.cdiv(n, cfg.block_n), bsz * heads),
            q_signs, k_signs, v, grad_out, row_state, a, b, bias_t, vscale, vstep, qclip if plan.dq else delta,
            delta, da if plan.da_rows else delta, dq if plan.dq else delta,
            rows_sum if rows_sum is not None else delta,
            *sign_strides, *v.stride(), *grad_out.stride(), *beta.strides, qclip.shape[-1],
            heads, n, m, spec.scale, spec.scale * LOG2E.value, beta.rows, *beta.grid,
            NEED_DA=plan.da_rows, NEED_DQ=plan.dq, HEAD_DBIAS=plan.head_dbias, DELTA_GIVEN=plan.delta_given,
            **common,
        )
    gbias, gstrides = _bias_grad_buffer(bias, beta, plan, (bsz, heads, n, m))
    if plan.key_side:
        launch(_binary_attn_bwd_k_kernel, (triton.cdiv(m, cfg.block_m), bsz * heads),
            q_signs, k_signs, v, grad_out, row_state, delta, a, b, bias_t, gbias if gbias is not None else delta,
            vscale, vstep, kclip if plan.dk else delta, dv if plan.dv else delta, dk if plan.dk else delta,
            db if plan.db else delta, da_cols if plan.da_by_keys else delta,
            *sign_strides, *v.stride(), *grad_out.stride(), *beta.strides, *gstrides, kclip.shape[-1],
            *(dv.stride()[:3] if plan.dv else (0, 0, 0)), heads, n, m, spec.scale, spec.scale * LOG2E.value,
            beta.rows, *beta.grid,
            NEED_DV=plan.dv, NEED_DB=plan.db, NEED_DK=plan.dk, BIAS_GRAD=plan.scattered_dbias,
            NEED_DA_COLS=plan.da_by_keys, **common,
        )
    dq, dk = _with_chains([(dq, da_cols if plan.da_by_keys else da, q_signs, needs[0]), (dk, db, k_signs, needs[1])],
                          head_dim, spec, v)
    dbias = _finish_bias_grad(bias, plan, gbias, rows_sum)
    return dq, dk, dv, da if needs[3] else None, db if needs[4] else None, dbias


def _bias_grad_buffer(bias, beta, plan: _Plan, shape4):
    """float32 accumulation buffer of the bias gradient and its ``(B, H, N, M)`` strides."""
    if plan.bias_grad == _TABLE:
        return torch.zeros_like(beta.tensor), (0, 0, 0, 0)  # (H, rows), like the kernel's table
    if plan.bias_grad == _DENSE:
        buf = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        return buf, tuple(buf.expand(shape4).stride())
    return None, (0, 0, 0, 0)


def _finish_bias_grad(bias, plan: _Plan, gbias, rows_sum):
    """The bias gradient in the bias's shape and dtype."""
    if plan.bias_grad == _HEAD:
        return rows_sum.sum(dim=(0, 2)).to(bias.dtype)  # (H,)
    if plan.bias_grad == _TABLE:
        return gbias.t().to(bias.dtype).contiguous()  # (rows, H)
    if plan.bias_grad == _DENSE:
        return gbias.to(bias.dtype)
    return None
