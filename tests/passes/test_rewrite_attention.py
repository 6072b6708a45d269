"""The rewrite pass on Dynamo graphs: what it finds, what it replaces, what it refuses and why.

Graphs are captured with a backend that only records them (no Inductor), so these tests
are fast; end-to-end numbers through Inductor are in tests/bitlower/test_backend*.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import bitlower
from bitlower.backend_config import BackendConfig
from bitlower.counters import counters
from bitlower.passes.find_attention import find_attention
from bitlower.passes.rewrite_attention import OPERATOR, SITES_META_KEY, rewrite_attention
from bitlower.testing import TOLERANCE, AttentionVariant, assert_close


def capture(fn, *inputs):
    """The single Dynamo graph of ``fn(*inputs)``."""
    torch._dynamo.reset()
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=keep, fullgraph=True)(*inputs)
    assert len(graphs) == 1
    return graphs[0]


def qkv(b=2, h=2, n=12, m=12, d=16, dv=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=gen, dtype=dtype) for s in ((b, h, n, d), (b, h, m, d), (b, h, m, dv)))


def rewrite(fn, *inputs, **config):
    """Capture, rewrite; returns the graph module and its site reports."""
    gm = rewrite_attention(capture(fn, *inputs), BackendConfig(**config))
    return gm, gm.meta[SITES_META_KEY]


def run(gm, **named):
    """Call a Dynamo graph with arguments by name (its placeholders follow first use, not signature)."""
    args = [named[n.target[2:-1]] for n in gm.graph.nodes if n.op == "placeholder"]  # "L_q_" -> "q"
    return gm(*args)[0]


def operator_calls(gm):
    return [n for n in gm.graph.nodes if n.target is OPERATOR]


def deit(q, k, v):
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v


def test_one_site_becomes_one_operator_call_and_nothing_else_remains():
    gm, reports = rewrite(deit, *qkv())
    assert [r.status for r in reports] == ["rewritten"]
    assert len(operator_calls(gm)) == 1
    targets = {n.target for n in gm.graph.nodes if n.op != "placeholder"}
    assert not targets & {"softmax", torch.matmul}, targets
    q, k, v = qkv(seed=1)
    assert_close("out", run(gm, q=q, k=k, v=v), bitlower.binary_attention(q, k, v), TOLERANCE[torch.float32])


def test_inserted_nodes_carry_fake_values_and_module_paths():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = AttentionVariant(mask="additive").module()

        def forward(self, q, k, v, mask):
            return self.attn(q, k, v, mask)

    q, k, v = qkv(n=16, m=16)
    mask = torch.randn(2, 1, 16, 16)
    gm, reports = rewrite(Block().eval(), q, k, v, mask)
    assert reports[0].module_path == "attn"
    call = operator_calls(gm)[0]
    assert call.meta["example_value"][0].shape == (2, 2, 16, 16)
    assert "nn_module_stack" in call.meta
    for node in gm.graph.nodes:
        if node.op not in ("placeholder", "output"):
            assert "example_value" in node.meta, node.format_node()


def test_two_sites_two_calls_and_counters():
    def two(q, k, v):
        return deit(q, k, v) + F.scaled_dot_product_attention(q, k, v)

    before = dict(counters["sites_rewritten"])
    gm, reports = rewrite(two, *qkv())
    assert len(operator_calls(gm)) == 2 and len(reports) == 2
    assert counters["sites_rewritten"]["sdpa"] == before.get("sdpa", 0) + 1
    assert counters["sites_rewritten"]["softmax_attention"] == before.get("softmax_attention", 0) + 1


def test_scale_on_q_before_a_reshape_is_bypassed_into_the_operator_scale():
    def flat(q, k, v):
        b, h, n, d = q.shape
        qf = (q * 0.25).reshape(b * h, n, d)  # (BH, N, D)
        kf, vf = k.reshape(b * h, -1, d), v.reshape(b * h, -1, v.shape[-1])
        return torch.bmm(torch.bmm(qf, kf.transpose(1, 2)).softmax(-1), vf).reshape(b, h, n, -1)

    gm, reports = rewrite(flat, *qkv())
    call = operator_calls(gm)[0]
    assert call.args[6] == 0.25
    assert not [n for n in gm.graph.nodes if n.target is __import__("operator").mul]


@pytest.mark.parametrize("fn, reason", [
    (lambda q, k, v: (lambda p: (p @ v, p))((q @ k.transpose(-2, -1)).softmax(-1)), "probabilities_reused"),
    (lambda q, k, v: (lambda s: (s.softmax(-1) @ v, s.sum()))(q @ k.transpose(-2, -1)), "scores_reused"),
    (lambda q, k, v: ((q @ k.transpose(-2, -1)) * (q @ k.transpose(-2, -1)).sigmoid()).softmax(-1) @ v,
     "score_factor_shape"),
    (lambda q, k, v: (q @ k.transpose(-2, -1)).masked_fill(k[..., :1].transpose(-2, -1) > 0, 0.0).softmax(-1) @ v,
     "masked_fill_value"),
    (lambda q, k, v: ((q @ k.transpose(-2, -1)).masked_fill(k[..., :1].transpose(-2, -1) > 0, float("-inf")) * -1.0)
     .softmax(-1) @ v, "mask_then_scale"),
    (lambda q, k, v: F.scaled_dot_product_attention(q[..., :4], k[..., :4], v), "operator_rejects"),
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5), "active_dropout"),
    (lambda q, k, v: F.dropout((q @ k.transpose(-2, -1)).softmax(-1), 0.1, True) @ v, "active_dropout"),
    (lambda q, k, v: (q.float() @ k.float().transpose(-2, -1)).softmax(-1).to(v.dtype) @ v, "mixed_dtypes"),
])
def test_sites_that_would_change_more_than_binarization_are_skipped(fn, reason):
    q, k, v = qkv(dtype=torch.float64)
    before = counters["sites_skipped"][reason]
    gm, reports = rewrite(fn, q, k, v)
    assert [(r.status, r.reason) for r in reports] == [("skipped", reason)]
    assert not operator_calls(gm)
    assert counters["sites_skipped"][reason] == before + 1


def test_a_softmax_that_never_meets_values_is_not_attention():
    gm, reports = rewrite(lambda x, w: F.softmax(x @ w, dim=-1), torch.randn(4, 8), torch.randn(8, 8))
    assert reports == []


@pytest.mark.parametrize("config, reason", [
    ({"skip": ("*",)}, "skipped_by_config"),
    ({"min_seq_len": 13}, "short_sequence"),
    ({"masks": "skip"}, "mask_by_config"),
])
def test_config_skips(config, reason):
    q, k, v = qkv()
    mask = torch.randn(2, 1, 12, 12)
    gm, reports = rewrite(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), q, k, v, mask,
                          **config)
    assert reports[0].reason == reason


def test_causal_becomes_a_bool_mask_or_is_skipped_by_config():
    q, k, v = qkv(n=10, m=10)
    causal = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    gm, reports = rewrite(causal, q, k, v)
    assert reports[0].status == "rewritten" and reports[0].details["bias_kind"] == "mask"
    keep = torch.ones(10, 10, dtype=torch.bool).tril()
    assert_close("causal", run(gm, q=q, k=k, v=v), bitlower.binary_attention(q, k, v, bias=keep), TOLERANCE[torch.float32])
    _, reports = rewrite(causal, q, k, v, causal="skip")
    assert reports[0].reason == "causal_by_config"


def test_grouped_query_attention_repeats_kv_heads_or_is_skipped_by_config():
    q, _, _ = qkv(h=4)
    _, k, v = qkv(h=2, seed=3)
    gqa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
    gm, reports = rewrite(gqa, q, k, v)
    assert reports[0].status == "rewritten"
    want = bitlower.binary_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    assert_close("gqa", run(gm, q=q, k=k, v=v), want, TOLERANCE[torch.float32])
    _, reports = rewrite(gqa, q, k, v, gqa="skip")
    assert reports[0].reason == "gqa_by_config"


def test_runtime_scalar_scale_is_folded_into_q_only_with_mean_abs_weighting():
    q, k, v = qkv()
    temperature = torch.tensor(0.3)
    fn = lambda q, k, v, t: ((q @ k.transpose(-2, -1)) / t).softmax(-1) @ v  # noqa: E731
    gm, reports = rewrite(fn, q, k, v, temperature)
    assert reports[0].status == "rewritten"
    want = bitlower.binary_attention(q / temperature, k, v, scale=1.0)
    assert_close("folded", run(gm, q=q, k=k, v=v, t=temperature), want, TOLERANCE[torch.float32])
    _, reports = rewrite(fn, q, k, v, temperature, weighting="none")
    assert reports[0].reason == "runtime_scale_needs_mean_abs"


def test_multi_head_attention_is_reported_and_left_alone():
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 9, 32)
    gm, reports = rewrite(lambda x: mha(x, x, x, need_weights=False)[0], x)
    assert [(r.pattern, r.reason) for r in reports] == [("multi_head_attention", "multi_head_attention_opaque")]


def test_find_attention_does_not_change_the_graph():
    gm = capture(deit, *qkv())
    code = gm.code
    assert len(find_attention(gm.graph)) == 1
    assert gm.code == code


def test_backend_kernel_options_reach_every_rewritten_call():
    """``options={"kernel_options": ...}`` is each call's plan override (e.g. the Gluon forward in a model)."""
    from bitlower.codegen import KernelOptions
    from bitlower.spec import bind_fwd_args

    gm, _ = rewrite(deit, *qkv(), kernel_options="forward=hopper;backward=tldot")
    (call,) = operator_calls(gm)
    options = KernelOptions.decode(bind_fwd_args(call.args, call.kwargs)["kernel_options"])
    assert (options.forward, options.backward) == ("hopper", "tldot")
    default, _ = rewrite(deit, *qkv())
    assert bind_fwd_args(operator_calls(default)[0].args)["kernel_options"] == ""


@pytest.mark.parametrize("value, match", [("forward=cudnn", "forward must be one of"), ("bogus=1", "bogus"),
                                          ("counted=True", "backend's own mark"), (3, "KernelOptions")])
def test_bad_backend_kernel_options_are_named(value, match):
    with pytest.raises(ValueError, match=match):
        BackendConfig(kernel_options=value)
