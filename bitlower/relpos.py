"""Relative-position bias table indexing over a patch grid with prefix tokens.

A table has ``(2*Gh - 1) * (2*Gw - 1) + 3`` rows and ``H`` columns. Token ``t`` of a
sequence with ``p`` prefix tokens (cls, distillation) is patch ``t - p`` of the grid,
row-major. Row of the pair ``(i, j)``:

- both patches: ``(yi - yj + Gh - 1) * (2*Gw - 1) + (xi - xj + Gw - 1)``
- prefix -> patch: ``R``; patch -> prefix: ``R + 1``; prefix -> prefix: ``R + 2``,
  with ``R = (2*Gh - 1) * (2*Gw - 1)``.

The Triton kernels compute the same index in-kernel from ``(Gh, Gw, p)``.
"""
from __future__ import annotations

import torch

EXTRA_ROWS = 3  # prefix->patch, patch->prefix, prefix->prefix


def table_rows(grid_h: int, grid_w: int) -> int:
    """Rows of a relative-position table for a ``grid_h x grid_w`` patch grid."""
    return (2 * grid_h - 1) * (2 * grid_w - 1) + EXTRA_ROWS


def relative_position_index(grid_h: int, grid_w: int, num_prefix: int, device=None) -> torch.Tensor:
    """int64 ``(N, N)`` table-row index, ``N = num_prefix + grid_h * grid_w``."""
    n = num_prefix + grid_h * grid_w
    t = torch.arange(n, device=device)
    patch = (t - num_prefix).clamp(min=0)
    y, x = patch // grid_w, patch % grid_w
    dy = y[:, None] - y[None, :] + grid_h - 1  # (N, N)
    dx = x[:, None] - x[None, :] + grid_w - 1  # (N, N)
    index = dy * (2 * grid_w - 1) + dx
    base = (2 * grid_h - 1) * (2 * grid_w - 1)
    is_prefix = t < num_prefix
    qp, kp = is_prefix[:, None], is_prefix[None, :]
    index = torch.where(qp & ~kp, base, index)
    index = torch.where(~qp & kp, base + 1, index)
    index = torch.where(qp & kp, base + 2, index)
    return index


def gather_table_bias(table: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Dense bias ``(1, H, N, N)`` from a ``(rows, H)`` table and ``grid = (Gh, Gw, prefix)``."""
    gh, gw, p = grid
    index = relative_position_index(gh, gw, p, device=table.device)  # (N, N)
    return table[index].permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)
