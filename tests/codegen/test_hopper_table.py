"""The Gluon forward's table-bias operand on the CPU: ``ext[r_i - c_j]`` is the table row ``relpos`` gives (i, j).

The kernel (``kernel_sage._scaled``, GPU-only) does exactly this gather per score; this checks the index
arithmetic every pair of every grid shape exercises, with and without prefix tokens.
"""
from __future__ import annotations

import math

import pytest
import torch

from bitlower.codegen.hopper.launcher import table_rows_operand
from bitlower.relpos import relative_position_index, table_rows


@pytest.mark.parametrize("grid", [(14, 14, 1), (3, 5, 0), (1, 1, 2), (4, 2, 3), (32, 32, 1), (7, 1, 1)], ids=str)
def test_every_pair_gathers_its_table_row(grid):
    grid_h, grid_w, prefix = grid
    n, heads = prefix + grid_h * grid_w, 3
    table = torch.randn(table_rows(grid_h, grid_w), heads, dtype=torch.bfloat16)
    operand = table_rows_operand(table, grid, n)  # (H, 2N + L)
    assert operand.dtype == torch.float32 and operand.shape[0] == heads and operand.is_contiguous()
    r = operand[:, :n].view(torch.int32).long()  # (H, N)
    c = operand[:, n:2 * n].view(torch.int32).long()
    ext = operand[:, 2 * n:]
    idx = r[:, :, None] - c[:, None, :]  # (H, N, N)
    assert idx.min() >= 0 and idx.max() < ext.shape[1]
    got = torch.gather(ext, 1, idx.reshape(heads, -1)).reshape(heads, n, n)
    want = table.float()[relative_position_index(grid_h, grid_w, prefix)].permute(2, 0, 1) * math.log2(math.e)
    assert torch.equal(got, want)  # the same float32 products: exact


def test_length_is_linear_in_the_grid():
    """No (N, N) tensor: 2N terms plus an extended table of about 10 Gh Gw entries per head."""
    grid = (64, 64, 1)
    n = 1 + 64 * 64
    operand = table_rows_operand(torch.zeros(table_rows(64, 64), 2), grid, n)
    assert operand.shape[1] < 2 * n + 10 * 64 * 64
