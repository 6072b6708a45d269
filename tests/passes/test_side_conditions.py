"""The matcher's side conditions: softmax axis, factor axes, dtypes; never a crash (issue 19 items 1, 2).

Each reproducer of the issue was rewritten (or crashed the compile) before the fix; now the site is
skipped with a named reason, counted, and the compiled graph computes what eager computes.
"""
import pytest
import torch
import torch.nn.functional as F

import bitlower
from bitlower.backend_config import BackendConfig
from bitlower.counters import counters
from bitlower.passes import decide as decide_module
from bitlower.passes import rewrite_attention as rewrite_module
from bitlower.passes.decide import factor_axes
from bitlower.passes.rewrite_attention import OPERATOR, SITES_META_KEY, rewrite_attention
from bitlower.testing import TOLERANCE, assert_close
from bitlower.testing import capture_graph as capture
from bitlower.testing import run_graph as run


def qkv(b=2, h=2, n=12, m=12, d=16, dv=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=gen, dtype=dtype) for s in ((b, h, n, d), (b, h, m, d), (b, h, m, dv)))

SOFTMAX = torch.nn.Softmax(dim=-1)
SOFTMAX_NO_DIM = torch.nn.Softmax()
SOFTMAX_DIM_2 = torch.nn.Softmax(dim=2)

AXES = {  # spelling -> reason (None: the key axis, rewritten)
    "s.softmax(dim=-2)": (lambda s: s.softmax(dim=-2), "softmax_not_over_keys"),
    "s.softmax(dim=1)": (lambda s: s.softmax(dim=1), "softmax_not_over_keys"),
    "F.softmax(s)": (lambda s: F.softmax(s), "softmax_dim_implicit"),
    "nn.Softmax()": (lambda s: SOFTMAX_NO_DIM(s), "softmax_dim_implicit"),
    "nn.Softmax(dim=2)": (lambda s: SOFTMAX_DIM_2(s), "softmax_not_over_keys"),
    "torch.softmax(s, 0)": (lambda s: torch.softmax(s, 0), "softmax_not_over_keys"),
    "torch.special.softmax(s, -2)": (lambda s: torch.special.softmax(s, -2), "softmax_not_over_keys"),
    "s.softmax(dim=3)": (lambda s: s.softmax(dim=3), None),
    "F.softmax(s, dim=-1)": (lambda s: F.softmax(s, dim=-1), None),
    "nn.Softmax(dim=-1)": (lambda s: SOFTMAX(s), None),
    "torch.special.softmax(s, 3)": (lambda s: torch.special.softmax(s, 3), None),
}


def _reports(fn, *inputs):
    gm = rewrite_attention(capture(fn, *inputs), BackendConfig())
    return gm, [(r.status, r.reason) for r in gm.meta[SITES_META_KEY]]


@pytest.mark.parametrize("spelling", list(AXES))
def test_softmax_axis_is_the_key_axis_in_every_spelling(spelling):
    softmax, reason = AXES[spelling]
    fn = lambda q, k, v: softmax(q @ k.transpose(-2, -1)) @ v  # noqa: E731
    q, k, v = qkv(dtype=torch.float64)
    before = counters["sites_skipped"][reason]
    gm, reports = _reports(fn, q, k, v)
    assert reports == [("rewritten" if reason is None else "skipped", reason)]
    want = bitlower.binary_attention(q, k, v, scale=1.0) if reason is None else fn(q, k, v)
    assert_close("output", run(gm, q=q, k=k, v=v), want, TOLERANCE[torch.float64])
    if reason is not None:
        assert counters["sites_skipped"][reason] == before + 1


@pytest.mark.parametrize("shape, reason", [
    ((12,), "score_factor_per_key"),  # M == 12 != D: the compile crashed ("broadcast a dimension of length 12")
    ((16,), "score_factor_per_key"),  # M == D: was rewritten as binary_attention(q * w), wrong by 0.39
    ((1, 1, 1, 16), "score_factor_per_key"),
    ((16, 1), "score_factor_per_query"),
    ((2, 2, 16, 1), "score_factor_per_query"),
    ((16, 16), "score_factor_shape"),
    ((3, 1, 1, 1, 1), "score_factor_shape"),  # would grow the scores
    ((2, 2, 1, 1), None),  # one number per (batch, head): folded into q
    ((1, 2, 1, 1), None),
    ((1,), None),
    ((), None),
])
def test_a_factor_on_the_scores_folds_into_q_only_per_batch_and_head(shape, reason):
    fn = lambda q, k, v, w: ((q @ k.mT) * w).softmax(-1) @ v  # noqa: E731  (the issue's g)
    q, k, v = qkv(n=16, m=16 if shape != (12,) else 12, d=16, dtype=torch.float64)
    w = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
    gm, reports = _reports(fn, q, k, v, w)
    assert reports == [("rewritten" if reason is None else "skipped", reason)]
    got = run(gm, q=q, k=k, v=v, w=w)
    want = bitlower.binary_attention(q * w, k, v, scale=1.0) if reason is None else fn(q, k, v, w)
    assert_close("output", got, want, TOLERANCE[torch.float64])


def test_factor_axes_classification():
    scores = (2, 3, 5, 7)
    assert [factor_axes(s, scores) for s in [(), (1,), (7,), (5, 1), (5, 7), (2, 3, 1, 1), (4, 1, 1, 1, 1), (6,)]] == \
        ["head", "head", "key", "query", "score", "head", "grows", "grows"]


def test_a_factor_or_bias_that_promotes_the_scores_dtype_is_skipped():
    q, k, v = qkv()
    bias = torch.randn(12, 12, dtype=torch.float64)
    fn = lambda q, k, v, b: ((q @ k.mT) + b).softmax(-1).float() @ v  # noqa: E731
    _, reports = _reports(fn, q, k, v, bias)
    assert reports == [("skipped", "score_operand_dtype")]


def test_a_check_that_raises_skips_the_site_and_the_compile_goes_on(monkeypatch):
    def broken(site, config):
        raise IndexError("a check met a graph it does not understand")

    monkeypatch.setattr(decide_module, "CHECKS", (broken,))
    q, k, v = qkv()
    fn = lambda q, k, v: (q @ k.mT * 0.25).softmax(-1) @ v  # noqa: E731
    gm, reports = _reports(fn, q, k, v)
    assert reports == [("skipped", "analysis_error")]
    assert_close("output", run(gm, q=q, k=k, v=v), fn(q, k, v), TOLERANCE[torch.float32])


def test_a_rewrite_that_raises_leaves_the_graph_as_it_was(monkeypatch):
    def broken(emit, site, q, k, flat):
        emit.call(torch.neg, q)  # a node is inserted before the failure: it must go again
        raise RuntimeError("emission failed")

    monkeypatch.setattr(rewrite_module, "_bias", broken)
    q, k, v = qkv()
    fn = lambda q, k, v: (q @ k.mT * 0.25).softmax(-1) @ v  # noqa: E731
    graph = capture(fn, q, k, v)
    code = graph.code
    gm = rewrite_attention(graph, BackendConfig())
    assert [(r.status, r.reason) for r in gm.meta[SITES_META_KEY]] == [("skipped", "rewrite_error")]
    assert gm.code == code and not [n for n in gm.graph.nodes if n.target is OPERATOR]
