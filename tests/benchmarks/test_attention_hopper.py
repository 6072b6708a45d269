"""``benchmarks/attention_hopper.py`` on the CPU: its float64 check passes a correct output and flags a wrong one,
with and without the table bias + token weighting rows' operands (the timing is GPU-only)."""
from __future__ import annotations

import pytest
import torch

from bitlower import reference
from bitlower.relpos import table_rows
from bitlower.spec import CallSpec


@pytest.mark.parametrize("table_token", [False, True], ids=["mean_abs", "table_token"])
def test_the_check_passes_the_reference_and_flags_a_wrong_output(load_script, table_token):
    hopper_bench = load_script("attention_hopper")
    gen = torch.Generator().manual_seed(0)
    bsz, heads, n, dim = 2, 3, 20, 16  # grid (4, 5, 0): N 20
    q, k, v = (torch.randn(bsz, heads, n, dim, generator=gen).to(torch.bfloat16) for _ in range(3))
    extra, spec = (None, None, None), CallSpec(scale=dim ** -0.5)
    if table_token:
        a, b = (torch.rand(bsz, heads, n, generator=gen).to(torch.bfloat16) + 0.5 for _ in range(2))
        extra = (a, b, 0.5 * torch.randn(table_rows(4, 5), heads, generator=gen).to(torch.bfloat16))
        spec = CallSpec(scale=dim ** -0.5, weighting="token", bias_kind="table", grid=(4, 5, 0))
    right = reference.forward(q, k, v, *extra, spec)
    assert hopper_bench.checked(lambda: right, q, k, v, spec, extra) is None
    wrong = (right[0].flip(2),) + tuple(right[1:])  # rows permuted
    assert hopper_bench.checked(lambda: wrong, q, k, v, spec, extra).startswith("FAIL")
    if table_token:  # the same output judged without its bias and scalars is wrong: the check reads them
        assert hopper_bench.checked(lambda: right, q, k, v, CallSpec(scale=dim ** -0.5)).startswith("FAIL")
