"""The rewrite under ``torch.compile(dynamic=True)``: symbolic softmax scales reach the operator.

With dynamic shapes SDPA's default scale ``D ** -0.5`` (and ``q.shape[-1] ** -0.5`` written
out) is a ``SymFloat``. The rewrite passes it to the operator's ``scale`` as a graph value;
the operator's schema types ``scale`` as ``float``, so its trace adds a guard on the value and
a new ``D`` recompiles. Each compile goes through ``bitlower_eager_backend`` (AOTAutograd
without Inductor), except one run of the ``backend="bitlower"`` entry point itself.
"""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch.fx import Node

import bitlower
from bitlower.backend import bitlower_eager_backend
from bitlower.counters import counters, reset
from bitlower.passes.op_table import value_of
from bitlower.passes.rewrite_attention import OPERATOR
from bitlower.testing import TOLERANCE, assert_close

SCALE_ARG = 6  # position of ``scale`` in bitlower::binary_attention_fwd

STYLES = {
    "sdpa default scale": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    "sdpa scale=q.shape[-1] ** -0.5": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, scale=q.shape[-1] ** -0.5),
    "scores * q.shape[-1] ** -0.5": lambda q, k, v: (
        (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v,
}


def qkv(n, d, requires_grad=False, seed=0):
    """q, k, v of shape ``(2, 3, n, d)`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, n, d, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
                 for _ in range(3))


def compile_dynamic(fn, graphs: list, **options):
    """``fn`` compiled with ``dynamic=True, fullgraph=True``; each rewritten graph is appended to ``graphs``."""
    def backend(gm, example_inputs):
        compiled = bitlower_eager_backend(gm, example_inputs, options=options)
        graphs.append(gm)  # rewritten in place
        return compiled

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, dynamic=True, fullgraph=True)


def operator_scales(graphs) -> list:
    return [n.args[SCALE_ARG] for gm in graphs for n in gm.graph.nodes if n.target is OPERATOR]


# weighting "none" needs the scale in the operator's ``scale``: folded into q, sgn(q * s) drops s
CASES = [("sdpa default scale", "mean_abs"), ("sdpa default scale", "none"),
         ("sdpa scale=q.shape[-1] ** -0.5", "none"), ("scores * q.shape[-1] ** -0.5", "none")]


@pytest.mark.parametrize("style, weighting", CASES)
def test_symbolic_scale_reaches_the_operator_as_a_graph_value(style, weighting):
    reset()
    graphs = []
    q, k, v = qkv(12, 16)
    got = compile_dynamic(STYLES[style], graphs, weighting=weighting)(q, k, v)
    assert_close("output", got, bitlower.binary_attention(q, k, v, weighting=weighting), TOLERANCE[torch.float64])
    scale, = operator_scales(graphs)
    assert isinstance(scale, Node) and isinstance(value_of(scale), torch.SymFloat)
    # one site, rewritten; CPU runs the reference, not a fallback
    assert counters["sites_found"].total() == counters["sites_rewritten"].total() == len(graphs) == 1
    assert not counters["sites_skipped"] and not counters["fallback"]


def test_a_new_head_dim_recompiles_and_output_and_gradients_stay_exact():
    reset()
    graphs = []
    compiled = compile_dynamic(STYLES["sdpa default scale"], graphs)
    q, k, v = qkv(12, 16)
    assert_close("output D=16", compiled(q, k, v), bitlower.binary_attention(q, k, v), TOLERANCE[torch.float64])
    q, k, v = qkv(9, 24, requires_grad=True, seed=1)  # the backward's scale is the new D's too
    got, want = compiled(q, k, v), bitlower.binary_attention(q, k, v)
    assert_close("output D=24", got, want, TOLERANCE[torch.float64])
    grad = torch.randn_like(want)
    for name, g, w in zip("qkv", torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        assert_close(f"d{name} D=24", g, w, TOLERANCE[torch.float64])
    assert len(graphs) == 2  # the operator's guard on its scale's value: D = 24 is a new graph
    assert counters["sites_rewritten"]["sdpa"] == counters["sites_found"]["sdpa"] == 2


def test_mask_before_a_symbolic_scale_is_left_alone_logged_and_counted(caplog):
    def masked_then_scaled(q, k, v, keep):  # the scale's sign decides whether -inf stays -inf
        scores = (q @ k.transpose(-2, -1)).masked_fill(~keep, float("-inf"))
        return (scores * q.shape[-1] ** -0.5).softmax(dim=-1) @ v

    reset()
    graphs = []
    compiled = compile_dynamic(masked_then_scaled, graphs)
    with caplog.at_level(logging.INFO, logger="bitlower.passes.rewrite_attention"):
        for n, d in ((12, 16), (9, 16)):
            q, k, v = qkv(n, d)
            keep = torch.ones(n, n, dtype=torch.bool).tril()
            assert_close(f"output N={n}", compiled(q, k, v, keep), masked_then_scaled(q, k, v, keep),
                         TOLERANCE[torch.float64])
    assert not operator_scales(graphs)
    assert counters["sites_skipped"] == {"mask_then_scale": len(graphs)} and not counters["sites_rewritten"]
    assert any("mask_then_scale" in r.getMessage() for r in caplog.records)


def test_module_calling_sdpa_compiles_through_inductor_with_dynamic_shapes():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    reset()
    torch._dynamo.reset()
    compiled = torch.compile(Attention(), backend="bitlower", dynamic=True, fullgraph=True)
    for n, d in ((12, 16), (9, 24)):
        q, k, v = qkv(n, d, seed=n)
        assert_close(f"output N={n} D={d}", compiled(q, k, v), bitlower.binary_attention(q, k, v),
                     TOLERANCE[torch.float64])
    assert counters["sites_rewritten"]["sdpa"] == counters["sites_found"]["sdpa"] >= 1
    assert not counters["sites_skipped"] and not counters["fallback"]
