"""Preparation of the kernels' bias and value-quantisation operands.

Host code, and one kernel: ``_table_dense_kernel`` copies a relative-position table into a dense
``(H, N, M)`` bias, program = (64-row block, 64-column block, head), no communication.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitlower.reference import V_LEVELS
from bitlower.relpos import table_rows

from .configs import DENSE_TABLE_MAX_ELEMENTS
from .launch import launch
from .tiles import BIAS_CODES, LOG2E, table_index

DENSE_BLOCK = 64  # (64, 64) tiles of the materialised table bias: a pure copy, memory-bound


@dataclass
class BiasOperand:
    """What a kernel needs to read ``beta``.

    Attributes:
        code: constexpr bias code (see ``tiles.BIAS_CODES``).
        tensor: head bias ``(H,)`` float32; table ``(H, rows)`` float32 in log2 units; dense/mask:
            the caller's tensor expanded to ``(B, H, N, M)`` (stride 0 on broadcast dims).
        strides: ``(s_b, s_h, s_n, s_m)`` of the expanded view (zeros otherwise).
        rows: table rows; grid: ``(Gh, Gw, prefix)`` (zeros unless a table).
    """

    code: int
    tensor: torch.Tensor | None
    strides: tuple[int, int, int, int]
    rows: int
    grid: tuple[int, int, int]

    @property
    def has_prefix(self) -> bool:
        return self.grid[2] > 0


def bias_operand(bias: torch.Tensor | None, spec, shape4: tuple[int, int, int, int]) -> BiasOperand:
    """BiasOperand for ``bias`` of ``spec.bias_kind``; ``shape4`` is ``(B, H, N, M)``."""
    kind = spec.bias_kind
    code = BIAS_CODES[kind]
    zeros = (0, 0, 0, 0)
    if kind == "none":
        return BiasOperand(code, None, zeros, 0, (0, 0, 0))
    if kind == "head":
        return BiasOperand(code, bias.to(torch.float32).contiguous(), zeros, 0, (0, 0, 0))
    if kind == "table":
        gh, gw, prefix = spec.grid
        table = (bias.to(torch.float32) * LOG2E.value).t().contiguous()  # (H, rows), log2 units
        return BiasOperand(code, table, zeros, table_rows(gh, gw), (gh, gw, prefix))
    view = bias.expand(shape4)  # (B, H, N, M) view, stride 0 on broadcast dims
    return BiasOperand(code, view, tuple(view.stride()), 0, (0, 0, 0))


def value_scales(v: torch.Tensor):
    """Per (batch, head, channel) int8 scales of v, computed exactly as the reference does.

    Returns:
        ``(vscale, vstep)`` float32 ``(B, H, Dv)``: ``V^ = round(v * vscale) * vstep`` with
        ``vscale = 127 / max|v|`` and ``vstep = max|v| / 127`` (a zero channel uses 1).
    """
    vmax = v.to(torch.float32).abs().amax(dim=-2)  # (B, H, Dv)
    safe = torch.where(vmax > 0, vmax, 1.0)
    return (V_LEVELS / safe).contiguous(), (safe / V_LEVELS).contiguous()


def uses_dense_table(heads: int, n: int, m: int) -> bool:
    """Whether the "v2" forward materialises a table bias as a dense ``(H, N, M)`` tensor (else gathers in-kernel)."""
    return heads * n * m <= DENSE_TABLE_MAX_ELEMENTS


@triton.jit
def _table_dense_kernel(table_ptr, out_ptr, s_tr, s_th, N, M, grid_h, grid_w, prefix,
                        HAS_PREFIX: tl.constexpr, BLOCK: tl.constexpr):
    """out ``(H, N, M)`` = table[index(i, j), h]; program = (row block, column block, head), no communication."""
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
    grid_dims = (triton.cdiv(n, DENSE_BLOCK), triton.cdiv(n, DENSE_BLOCK), heads)
    launch(_table_dense_kernel, grid_dims,
        table, out, *table.stride(), n, n, *grid, HAS_PREFIX=grid[2] > 0, BLOCK=DENSE_BLOCK, num_warps=4)
    return out
