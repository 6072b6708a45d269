"""Launcher of the round-2 forward: stats pass (or none), bias preparation, grid and config choice.

Same contract as ``forward.forward`` (``bitlower.reference.forward``'s outputs), except that the
four packed outputs have 0 words when ``spec.save_bits`` is False (the operator drops them then).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import DEFAULT_LIMIT, DENSE_TABLE_MAX_ELEMENTS, STATIC_LIMIT, padded_dim
from .forward_v2_kernel import _binary_attn_fwd_v2_kernel
from .operands import BiasOperand, bias_operand
from .plan import KernelOptions, forward_plan
from .stats import head_stats
from .tiles import BIAS_CODES, LOG2E, table_index

DENSE_BLOCK = 64  # (64, 64) tiles of the materialised table bias: a pure copy, memory-bound


def uses_dense_table(heads: int, n: int, m: int) -> bool:
    """Whether v2 materialises a table bias as a dense ``(H, N, M)`` tensor (else gathers in-kernel)."""
    return heads * n * m <= DENSE_TABLE_MAX_ELEMENTS


@triton.jit
def _table_dense_kernel(table_ptr, out_ptr, s_tr, s_th, N, M, grid_h, grid_w, prefix,
                        HAS_PREFIX: tl.constexpr, BLOCK: tl.constexpr):
    """out ``(H, N, M)`` = table[index(i, j), h]; program = (row block, column block, head)."""
    h = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_mask, col_mask = rows < N, cols < M
    idx = table_index(tl.where(row_mask, rows, 0), tl.where(col_mask, cols, 0), grid_h, grid_w, prefix, HAS_PREFIX)
    val = tl.load(table_ptr + idx * s_tr + h * s_th)
    out = out_ptr + h.to(tl.int64) * N * M + rows[:, None] * M + cols[None, :]
    tl.store(out, val, mask=row_mask[:, None] & col_mask[None, :])


def dense_table(table: torch.Tensor, grid: tuple[int, int, int], n: int) -> torch.Tensor:
    """The table bias as a dense ``(1, H, N, N)`` tensor in the table's dtype (an exact copy of entries)."""
    heads = table.shape[1]
    out = torch.empty(1, heads, n, n, dtype=table.dtype, device=table.device)
    launch = (triton.cdiv(n, DENSE_BLOCK), triton.cdiv(n, DENSE_BLOCK), heads)
    torch.library.wrap_triton(_table_dense_kernel)[launch](
        table, out, *table.stride(), n, n, *grid, HAS_PREFIX=grid[2] > 0, BLOCK=DENSE_BLOCK, num_warps=4)
    return out


def _bias(bias, spec, shape4, table_dense: bool | None):
    """``(BiasOperand, beta_max or None)``: beta_max ``(H,)`` float32 max |beta| in log2 units."""
    if spec.bias_kind != "table":
        return bias_operand(bias, spec, shape4), None
    beta_max = (bias.to(torch.float32).abs().amax(dim=0) * LOG2E.value).contiguous()  # (H,)
    bsz, heads, n, m = shape4
    if table_dense is None:
        table_dense = uses_dense_table(heads, n, m)
    if not table_dense:
        return bias_operand(bias, spec, shape4), beta_max
    view = dense_table(bias, spec.grid, n).expand(shape4)  # (B, H, N, M), stride 0 on B
    return BiasOperand(BIAS_CODES["dense"], view, tuple(view.stride()), 0, (0, 0, 0)), beta_max


def forward_v2(q, k, v, a, b, bias, spec, plan=None, *, table_dense: bool | None = None, static_max: bool = True,
               config=None):
    """Round-2 fused forward (``pv_quant == "none"`` only; ``codegen.forward`` routes the rest to v1).

    Args:
        q, k, v, a, b, bias, spec: as ``codegen.forward``.
        plan: the call's ``ForwardPlan`` (kernel "v2"); None makes one from ``static_max`` and ``config``.
        table_dense: materialise a table bias densely (None: ``uses_dense_table``).
        static_max, config: without ``plan``, ``KernelOptions(static_max=..., forward_tiles=config.text)``.

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)`` as the reference (bits with 0 words
        unless ``spec.save_bits``).

    Raises:
        ValueError: ``pv_quant`` is not "none".
    """
    if spec.pv_quant != "none":
        raise ValueError("forward_v2 covers pv_quant 'none' only")
    if plan is None:
        options = KernelOptions(forward="v2", forward_tiles=config.text if config else "", static_max=static_max)
        plan = forward_plan(q, k, v, bias, spec, options)
    bsz, heads, n, dim = q.shape
    m, dim_v = k.shape[2], v.shape[-1]
    mean_abs = spec.weighting == "mean_abs"
    f32 = dict(dtype=torch.float32, device=q.device)
    qbits, qclip, a_rows, q_sums, _, q_signs = head_stats(q, a, spec, eff=not mean_abs, signs=True)
    kbits, kclip, b_rows, k_sums, b_max, k_signs = head_stats(k, b, spec, eff=not mean_abs, signs=True)
    a_eff = torch.empty(bsz, heads, n, 1, **f32) if mean_abs else a_rows
    b_eff = torch.empty(bsz, heads, m, 1, **f32) if mean_abs else b_rows
    beta, beta_max = _bias(bias, spec, (bsz, heads, n, m), table_dense)
    out = torch.empty(bsz, heads, n, dim_v, dtype=v.dtype, device=v.device)
    lse = torch.empty(bsz, heads, n, **f32)
    row_state = torch.empty(bsz, heads, n, 2, **f32)  # (m2, log2 l) per row
    dp, dvp = padded_dim(dim), padded_dim(dim_v)
    cfg = plan.tiles
    limit, offset = STATIC_LIMIT.get(v.dtype, DEFAULT_LIMIT)
    pick = lambda t: lse if t is None else t  # noqa: E731 - an unused pointer argument
    torch.library.wrap_triton(_binary_attn_fwd_v2_kernel)[(triton.cdiv(n, cfg.block_n), bsz * heads)](
        q_signs, k_signs, v, out, lse, row_state, a_eff, b_eff, pick(q_sums), pick(k_sums), pick(b_max),
        pick(beta.tensor), pick(beta_max),
        *v.stride(), *beta.strides,
        heads, n, m, spec.scale * LOG2E.value, 1.0 / (n * dim), 1.0 / (m * dim), beta.rows, *beta.grid,
        D=dim, DP=dp, DV=dim_v, DVP=dvp, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, MEAN_ABS=mean_abs,
        BIAS=beta.code, HAS_PREFIX=beta.has_prefix, BETA_MAX=beta_max is not None,
        STATIC_MAX=plan.static_max, LIMIT=limit, P_OFFSET=offset, DOT=plan.dot,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state
