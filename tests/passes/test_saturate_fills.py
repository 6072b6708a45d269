"""``where`` fills beyond the dtype's range reach Inductor as eager's rounding of them."""
import pytest
import torch

from bitlower.counters import counters
from bitlower.passes.saturate_fills import rounded, saturate_where_fills


def _captured(fn, *inputs):
    """The Dynamo graph of ``fn`` after ``saturate_where_fills`` (and the compiled result: the graph run)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(saturate_where_fills(gm))
        return graphs[-1].forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*inputs)
    return graphs[0], out


def _fills(gm):
    return [a for n in gm.graph.nodes if n.target in (torch.where, "where") for a in n.args if isinstance(a, float)]


S = torch.randn(2, 5, 7).to(torch.float16)
KEEP = torch.rand(2, 5, 7) > 0.3


@pytest.mark.parametrize("fn", [lambda s, m: torch.where(m, s, -1e9), lambda s, m: torch.where(~m, -1e9, s),
                                lambda s, m: s.where(m, -1e9)], ids=["where", "where_swapped", "method"])
def test_an_overflowing_float16_fill_becomes_eagers_minus_inf(fn):
    before = counters["where_fill_saturated"]["torch.float16"]
    gm, out = _captured(fn, S, KEEP)
    assert _fills(gm) == [float("-inf")]
    assert counters["where_fill_saturated"]["torch.float16"] == before + 1
    assert torch.equal(out, fn(S, KEEP))  # eager fills -inf too


@pytest.mark.parametrize("dtype, fill", [(torch.float16, -100.0), (torch.float16, float("-inf")),
                                         (torch.bfloat16, -1e9), (torch.float32, -1e30)])
def test_fills_the_dtype_holds_are_left_as_written(dtype, fill):
    gm, out = _captured(lambda s, m: torch.where(m, s, fill), S.to(dtype), KEEP)
    assert _fills(gm) == [fill]


def test_masked_fill_is_left_as_written():
    """Eager ``masked_fill(m, -1e9)`` on float16 raises; the graph keeps the call for Inductor to refuse alike."""
    gm, _ = _captured(lambda s, m: s.masked_fill(m, -1e4), S, KEEP)
    assert [a for n in gm.graph.nodes for a in n.args if isinstance(a, float)] == [-1e4]


def test_rounding_is_the_dtypes():
    assert rounded(-1e9, torch.float16) == float("-inf") and rounded(1e5, torch.float16) == float("inf")
    assert rounded(65504.0, torch.float16) == 65504.0 and rounded(-1e9, torch.bfloat16) == -238 * 2.0**22


def test_the_backend_compiles_the_float16_where_fill():
    torch._dynamo.reset()
    fn = lambda s, m: (torch.where(m, s, -1e9).float().softmax(-1))  # noqa: E731
    got = torch.compile(fn, backend="bitlower", fullgraph=True)(S, KEEP)
    assert torch.allclose(got, fn(S, KEEP), atol=1e-6)
