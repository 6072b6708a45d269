"""A Dynamo restart does not count one site twice (issue 19 item 9).

With ``specialize_float=False`` (torch's default) a Python float that changes between calls
becomes a ``SymFloat`` graph input; the operator's ``scale: float`` specializes it, so
AOTAutograd's scalar tensorification raises ``TensorifyScalarRestartAnalysis`` inside the
backend's compile and Dynamo hands the backend the same site again. Only the graph that
compiles counts.
"""
import pytest
import torch
import torch.nn.functional as F

from bitlower.backend import bitlower_eager_backend
from bitlower.counters import counters, kept_on_success, reset

STYLES = {
    "scores * s": lambda q, k, v, s: ((q @ k.transpose(-2, -1)) * s).softmax(-1) @ v,
    "sdpa scale=s": lambda q, k, v, s: F.scaled_dot_product_attention(q, k, v, scale=s),
}


@pytest.mark.parametrize("style", ["scores * s", "sdpa scale=s"])
def test_restarted_compile_counts_each_kept_graph_once(style):
    """``bitlower_eager_backend`` wraps its compile as ``bitlower_backend`` does (17 s less than Inductor)."""
    backend = bitlower_eager_backend
    reset()
    torch._dynamo.reset()
    calls = {"started": 0, "kept": 0}

    def counting(gm, example_inputs):
        calls["started"] += 1
        compiled = backend(gm, example_inputs)
        calls["kept"] += 1
        return compiled

    compiled = torch.compile(STYLES[style], backend=counting, fullgraph=True)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for s in (0.25, 0.3):
        torch.testing.assert_close(compiled(q, k, v, s), compiled(q, k, v, s))
    assert calls["started"] > calls["kept"], "no restart happened: the test no longer covers the case"
    pattern = "sdpa" if "sdpa" in style else "softmax_attention"
    assert counters["sites_rewritten"][pattern] == counters["sites_found"][pattern] == calls["kept"]


def test_kept_on_success_restores_counts_when_the_block_raises():
    reset()
    counters["sites_found"]["sdpa"] += 1
    with pytest.raises(RuntimeError):
        with kept_on_success():
            counters["sites_found"]["sdpa"] += 1
            counters["fallback"]["x"] += 1
            raise RuntimeError("compile failed")
    assert dict(counters) == {"sites_found": {"sdpa": 1}}
    with kept_on_success():
        counters["sites_found"]["sdpa"] += 1
    assert counters["sites_found"]["sdpa"] == 2
