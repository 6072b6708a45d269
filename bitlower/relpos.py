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


# The two functions below express the same gather with views (flip + unfold) so that the
# compiled CPU reference needs no data-dependent indexing: Inductor (torch 2.13, CPU)
# fails on a gather or index_add whose index is computed in the graph
# ("vr must not be None for symbol q0").


def table_to_dense(table: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Dense bias ``(1, H, N, N)`` from a ``(rows, H)`` table, equal to :func:`gather_table_bias`."""
    gh, gw, p = grid
    heads, patches = table.shape[1], gh * gw
    base = (2 * gh - 1) * (2 * gw - 1)
    rel = table[:base].view(2 * gh - 1, 2 * gw - 1, heads).flip(0, 1)  # F[s, t] = T[2gh-2-s, 2gw-2-t]
    win = rel.unfold(0, gh, 1).unfold(1, gw, 1)  # (gh, gw, H, gh, gw): [s, t, h, yj, xj] = F[s+yj, t+xj]
    win = win.flip(0, 1)  # [yi, xi, h, yj, xj] = T[yi-yj+gh-1, xi-xj+gw-1]
    pairs = win.permute(2, 0, 1, 3, 4).reshape(heads, patches, patches)  # (H, P, P)
    extra = table[base:base + 3].view(3, heads, 1, 1)  # prefix->patch, patch->prefix, prefix->prefix
    top = torch.cat([extra[2].expand(heads, p, p), extra[0].expand(heads, p, patches)], dim=-1)  # (H, p, N)
    bottom = torch.cat([extra[1].expand(heads, patches, p), pairs], dim=-1)  # (H, P, N)
    return torch.cat([top, bottom], dim=1).unsqueeze(0)  # (1, H, N, N)


def dense_to_table_grad(grad: torch.Tensor, grid: tuple[int, int, int], rows: int) -> torch.Tensor:
    """Adjoint of :func:`table_to_dense`: ``(H, N, N)`` gradient -> ``(rows, H)`` table gradient."""
    gh, gw, p = grid
    heads, patches = grad.shape[0], gh * gw
    base = (2 * gh - 1) * (2 * gw - 1)
    pairs = grad[:, p:, p:].reshape(heads, gh, gw, gh, gw).permute(1, 2, 0, 3, 4).flip(0, 1)  # (gh, gw, H, gh, gw)
    g1 = torch.ops.aten.unfold_backward(pairs, [gh, 2 * gw - 1, heads, gh], 1, gw, 1)
    rel = torch.ops.aten.unfold_backward(g1, [2 * gh - 1, 2 * gw - 1, heads], 0, gh, 1).flip(0, 1)
    extra = torch.stack([
        grad[:, :p, p:].sum(dim=(1, 2)),  # prefix->patch
        grad[:, p:, :p].sum(dim=(1, 2)),  # patch->prefix
        grad[:, :p, :p].sum(dim=(1, 2)),  # prefix->prefix
    ])  # (3, H)
    out = torch.cat([rel.reshape(base, heads), extra])
    return out if rows == base + 3 else torch.nn.functional.pad(out, (0, 0, 0, rows - base - 3))
