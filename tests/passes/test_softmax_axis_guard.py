"""Softmaxes over a non-last axis survive Inductor's attention pattern (pytorch/pytorch#196468)."""
import pytest
import torch

from bitlower.counters import counters

torch.manual_seed(0)
Q, K, V = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 18, 16), torch.randn(1, 2, 18, 8)


def _attention_over(dim):
    def fn(q, k, v):
        return ((q @ k.transpose(-2, -1)) * 0.25).softmax(dim) @ v
    return fn


def _error(fn, backend):
    torch._dynamo.reset()
    got = torch.compile(fn, backend=backend, fullgraph=True)(Q, K, V)
    want = fn(Q.double(), K.double(), V.double())
    return (got.double() - want).abs().max().item()


def test_inductor_alone_miscompiles_the_query_axis_softmax():
    """The upstream bug this pass guards against, on the pinned torch. When this fails, torch keeps the
    softmax axis: the guard can go."""
    assert _error(_attention_over(2), "inductor") > 0.1


@pytest.mark.parametrize("dim", [0, 1, 2, -2])
def test_bitlower_backend_keeps_the_softmax_axis(dim):
    """The site is left alone (not over the keys) and Inductor computes it as written."""
    before = counters["softmax_axis_guarded"].total()
    assert _error(_attention_over(dim), "bitlower") < 1e-5
    assert counters["softmax_axis_guarded"].total() - before == 1


def test_key_axis_softmax_is_not_guarded():
    before = counters["softmax_axis_guarded"].total()
    torch._dynamo.reset()
    torch.compile(lambda x: x.softmax(-1) * 2, backend="bitlower", fullgraph=True)(Q)
    assert counters["softmax_axis_guarded"].total() == before


def test_implicit_axis_and_dtype_are_kept():
    fn = lambda q, k, v: torch.nn.functional.softmax(q @ k.transpose(-2, -1), dtype=torch.float64) @ v.double()  # noqa: E731
    torch._dynamo.reset()
    got = torch.compile(fn, backend="bitlower", fullgraph=True)(Q, K, V)
    assert got.dtype == torch.float64
    assert torch.allclose(got, fn(Q, K, V), atol=1e-6)
