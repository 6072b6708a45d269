"""The view-based table bias equals the index-based gather, forward and adjoint."""
import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from bitlower.relpos import dense_to_table_grad, gather_table_bias, relative_position_index, table_rows, table_to_dense


@settings(max_examples=25, deadline=None)
@given(gh=st.integers(1, 5), gw=st.integers(1, 5), prefix=st.integers(0, 2), heads=st.integers(1, 3))
def test_table_views_equal_gather(gh, gw, prefix, heads):
    table = torch.randn(table_rows(gh, gw), heads, dtype=torch.float64, requires_grad=True)
    dense = table_to_dense(table, (gh, gw, prefix))
    assert torch.equal(dense, gather_table_bias(table, (gh, gw, prefix)))
    grad = torch.randn_like(dense)
    (want,) = torch.autograd.grad(gather_table_bias(table, (gh, gw, prefix)), table, grad)
    torch.testing.assert_close(dense_to_table_grad(grad[0], (gh, gw, prefix), table.shape[0]), want)


def test_index_rows_for_prefix_tokens():
    index = relative_position_index(2, 2, 1)
    base = 9
    assert index[0, 0] == base + 2 and index[0, 1] == base and index[1, 0] == base + 1
    assert index[1, 1] == 4  # same patch: offset (0, 0) -> centre row (1 * 3 + 1)
    assert index[1:, 1:].max() < base
