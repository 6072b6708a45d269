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


@pytest.mark.parametrize("pads", [(0, 0), (64, 128)], ids=["unpadded", "padded"])
@pytest.mark.parametrize("grid", [(14, 14, 1), (3, 5, 0), (1, 1, 2), (4, 2, 3), (32, 32, 1), (7, 1, 1)], ids=str)
def test_every_pair_gathers_its_table_row(grid, pads):
    grid_h, grid_w, prefix = grid
    n, heads = prefix + grid_h * grid_w, 3
    rows_pad, cols_pad = (n + extra for extra in pads)  # a launch's tiles cover rows and columns past N
    table = torch.randn(table_rows(grid_h, grid_w), heads, dtype=torch.bfloat16)
    operand = table_rows_operand(table, grid, n, rows_pad, cols_pad)  # (H, NP + MP + L)
    assert operand.dtype == torch.float32 and operand.shape[0] == heads and operand.is_contiguous()
    r = operand[:, :rows_pad].view(torch.int32).long()  # (H, NP)
    neg_c = operand[:, rows_pad:rows_pad + cols_pad].view(torch.int32).long()  # (H, MP)
    ext = operand[:, rows_pad + cols_pad:]
    idx = r[:, :, None] + neg_c[:, None, :]  # (H, NP, MP): what the kernel gathers, padding included, unmasked
    assert idx.min() >= 0 and idx.max() < ext.shape[1]
    got = torch.gather(ext, 1, idx.reshape(heads, -1)).reshape(heads, rows_pad, cols_pad)[:, :n, :n]
    want = table.float()[relative_position_index(grid_h, grid_w, prefix)].permute(2, 0, 1) * math.log2(math.e)
    assert torch.equal(got, want)  # the same float32 products: exact


def test_pads_shorter_than_the_sequence_are_refused():
    with pytest.raises(ValueError, match="rows_pad and cols_pad must be >= N"):
        table_rows_operand(torch.zeros(table_rows(2, 2), 1), (2, 2, 0), 4, 3, 4)


def test_length_is_linear_in_the_grid():
    """No (N, N) tensor: 2N terms plus an extended table of about 10 Gh Gw entries per head."""
    grid = (64, 64, 1)
    n = 1 + 64 * 64
    operand = table_rows_operand(torch.zeros(table_rows(64, 64), 2), grid, n)
    assert operand.shape[1] < 2 * n + 10 * 64 * 64


def test_the_table_bound_is_the_largest_table_entry_per_head():
    """``hopper_bias`` reads max |beta2| per head off the operand's extended table: every table row is in it."""
    from bitlower.codegen.hopper.launcher import hopper_bias
    from bitlower.spec import CallSpec

    grid, heads = (5, 4, 1), 3
    n = 1 + 5 * 4
    table = torch.randn(table_rows(5, 4), heads, dtype=torch.bfloat16)
    table[-1, 1] = -40.0  # the prefix -> prefix row holds head 1's largest magnitude
    spec = CallSpec(scale=0.125, bias_kind="table", grid=grid)
    *_, beta_max, static_ok = hopper_bias(table, spec, (2, heads, n, n), (64, 64))
    assert static_ok and torch.equal(beta_max, table.float().abs().amax(dim=0) * math.log2(math.e))


def test_the_layout_is_cached_per_grid_and_padding():
    from bitlower.codegen.hopper import launcher

    table = torch.randn(table_rows(3, 5), 2)
    first = launcher.table_rows_operand(table, (3, 5, 0), 15, 64, 64)
    key = ((3, 5, 0), 15, 64, 64, table.device)
    assert key in launcher._TABLE_LAYOUTS
    again = launcher.table_rows_operand(2 * table, (3, 5, 0), 15, 64, 64)  # same layout, new values
    terms = lambda operand: operand[:, :128].view(torch.int32)  # noqa: E731 - int32 bit patterns (some are NaNs)
    assert torch.equal(terms(again), terms(first)) and torch.equal(again[:, 128:], 2 * first[:, 128:])
