"""Kernel fallbacks counted at compile time: every compile counts, Inductor's caches or not.

This machine may have no GPU, so the compile tests give the pass a CUDA view of the graph
(``cuda_view``: every example value it reads becomes a fake CUDA tensor of the same layout)
while the operator itself still runs its CPU reference. The support check itself is
``bitlower.codegen.support``, unpatched; its reasons are the strings asserted below.
"""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake

import bitlower
from bitlower import ops
from bitlower.backend import bitlower_eager_backend
from bitlower.counters import counters
from bitlower.explain import explain
from bitlower.passes import kernel_fallback, op_table
from bitlower.passes.kernel_fallback import OPERATOR, call_fallback_reasons

HEAD_DIM_8 = "codegen kernels need D in [16, 256], got 8"  # the forward's check (codegen/support.py)
VALUE_DIM_8 = "codegen kernels need Dv in [16, 256], got 8"  # the backward's check


def _on_cuda(x):
    """``x`` (a tensor, or a tuple or list of them) as fake CUDA tensors with the same layout."""
    if isinstance(x, (tuple, list)):
        return type(x)(_on_cuda(t) for t in x)
    if not isinstance(x, torch.Tensor):
        return x
    with FakeTensorMode():
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda")


@pytest.fixture
def cuda_view(monkeypatch):
    """The fallback pass sees every call on CUDA; the operator still runs on CPU."""
    monkeypatch.setattr(kernel_fallback, "value_of", lambda x: _on_cuda(op_table.value_of(x)))


@pytest.fixture
def traced_bodies(monkeypatch):
    """Each time the operator's body asks for kernels: (check, backend counted it, fake tensors)."""
    from bitlower.codegen.plan import KernelOptions

    seen, original = [], ops._kernels_for

    def spy(check, tensors, spec, *options, **extra):
        counted = KernelOptions.decode(options[0] if options else extra.get("kernel_options", "")).counted
        seen.append((check, counted, is_fake(tensors[0])))
        return original(check, tensors, spec, *options, **extra)

    monkeypatch.setattr(ops, "_kernels_for", spy)
    return seen


def _fallbacks_since(before: dict) -> dict:
    return {r: n - before.get(r, 0) for r, n in counters["fallback"].items() if n != before.get(r, 0)}


def _qkv(d, dv=None, requires_grad=False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    shapes = ((1, 2, 16, d), (1, 2, 16, d), (1, 2, 16, dv or d))
    return tuple(torch.randn(s, generator=gen, dtype=dtype).requires_grad_(requires_grad) for s in shapes)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _operator_node(q_shape, device="cuda", dtype=torch.float16, weighting="mean_abs", save_bits=False):
    """A graph holding one operator call on fake tensors, with the example values Dynamo records."""
    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(n) for n in "qkv")
    args = (q, k, v, None, None, None, 0.125, weighting, "none", [], "ste", "none", 1.0, save_bits)
    call = graph.call_function(OPERATOR, args)
    with FakeTensorMode():
        for node in (q, k, v):
            node.meta["example_value"] = torch.empty(q_shape, device=device, dtype=dtype)
        call.meta["example_value"] = ops._binary_attention_fwd_fake(*[
            a.meta["example_value"] if isinstance(a, torch.fx.Node) else a for a in args])
    return call


@pytest.mark.parametrize("shape, kw, want", [
    ((1, 2, 16, 64), {}, []),
    ((1, 2, 16, 8), {}, [HEAD_DIM_8]),
    ((1, 2, 16, 8), {"save_bits": True}, [HEAD_DIM_8, VALUE_DIM_8]),  # differentiated: the backward too
    ((1, 2, 16, 64), {"dtype": torch.float64}, ["codegen kernels take float16/bfloat16/float32, got torch.float64"]),
    ((1, 2, 16, 64), {"weighting": "bilinear"}, ["codegen kernels do not cover bilinear (two-plane) weighting"]),
    ((1, 2, 16, 8), {"device": "cpu"}, []),  # the reference is the CPU path, not a fallback
], ids=["supported", "head_dim_8", "head_dim_8_train", "float64", "bilinear", "cpu"])
def test_reasons_of_one_call_are_the_kernels_support_check(shape, kw, want):
    assert call_fallback_reasons(_operator_node(shape, **kw)) == want


def test_traced_body_counts_only_outside_the_backends_compile():
    with FakeTensorMode():
        q, k, v = (torch.empty(1, 2, 16, 8, device="cuda") for _ in range(3))
    spec = ops.make_spec(8 ** -0.5, "mean_abs", "none", [], "ste", "none", 1.0)
    before = dict(counters["fallback"])
    counted = "counted=True"  # the bitlower backend marked this call: it counted it already
    assert ops._kernels_for("unsupported_reason", (q, k, v, None, None, None), spec, counted) is None
    assert _fallbacks_since(before) == {}
    assert ops._kernels_for("unsupported_reason", (q, k, v, None, None, None), spec) is None  # another backend
    assert _fallbacks_since(before) == {HEAD_DIM_8: 1}


def test_unsupported_head_dim_is_counted_when_compiled_forward_and_backward(cuda_view, traced_bodies):
    q, k, v = _qkv(8, requires_grad=True)
    torch._dynamo.reset()
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    before = dict(counters["fallback"])
    out = torch.compile(sdpa, backend=bitlower_eager_backend, fullgraph=True)(q, k, v)
    assert _fallbacks_since(before) == {HEAD_DIM_8: 1, VALUE_DIM_8: 1}  # once per site, not per traced body
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks
    assert traced_bodies and all(counted and fake for _, counted, fake in traced_bodies)
    out.sum().backward()
    torch.compile(sdpa, backend=bitlower_eager_backend, fullgraph=True)(q, k, v)  # cached code: no compile
    assert _fallbacks_since(before) == {HEAD_DIM_8: 1, VALUE_DIM_8: 1}
    torch.testing.assert_close(out, bitlower.binary_attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_dynamic_shapes_count_once_per_compile_at_the_traced_sizes(cuda_view):
    """``dynamic=True``: sizes are symbolic and the default scale reaches the operator as a
    ``SymFloat`` node; the reasons are those of the traced sizes, counted once per site."""
    q, k, v = _qkv(8, requires_grad=True)
    torch._dynamo.reset()
    before = dict(counters["fallback"])
    out = torch.compile(sdpa, backend=bitlower_eager_backend, fullgraph=True, dynamic=True)(q, k, v)
    assert _fallbacks_since(before) == {HEAD_DIM_8: 1, VALUE_DIM_8: 1}
    torch.testing.assert_close(out, bitlower.binary_attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_supported_sites_and_cpu_sites_count_nothing(cuda_view):
    before = dict(counters["fallback"])
    torch._dynamo.reset()
    torch.compile(sdpa, backend=bitlower_eager_backend, fullgraph=True)(*_qkv(16))
    assert _fallbacks_since(before) == {}
    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel_fallback, "value_of", op_table.value_of)  # the true CPU view
        torch.compile(sdpa, backend=bitlower_eager_backend, fullgraph=True)(*_qkv(8))
    assert _fallbacks_since(before) == {}


def test_operator_calls_already_in_the_graph_are_counted(cuda_view):
    def binarized(q, k, v):  # a binarized model calls the operator itself: nothing to rewrite
        return bitlower.binary_attention(q, k, v)

    torch._dynamo.reset()
    before = (dict(counters["fallback"]), sum(counters["sites_rewritten"].values()))
    torch.compile(binarized, backend=bitlower_eager_backend, fullgraph=True)(*_qkv(8))
    assert sum(counters["sites_rewritten"].values()) == before[1]
    assert _fallbacks_since(before[0]) == {HEAD_DIM_8: 1}


def test_warm_inductor_compile_from_the_fx_graph_cache_still_counts(cuda_view, traced_bodies, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # empty: the first compile is cold
    q, k, v = _qkv(8)
    inductor = torch._dynamo.utils.counters["inductor"]
    aot = torch._dynamo.utils.counters["aot_autograd"]
    with torch._inductor.config.patch(fx_graph_cache=True):
        for compile_number in (1, 2):
            torch._dynamo.reset()
            hits = inductor["fxgraph_cache_hit"] + aot["autograd_cache_hit"]
            before, breaks = dict(counters["fallback"]), sum(torch._dynamo.utils.counters["graph_break"].values())
            traced_bodies.clear()
            out = torch.compile(sdpa, backend="bitlower", fullgraph=True)(q, k, v)
            assert _fallbacks_since(before) == {HEAD_DIM_8: 1}, compile_number
            assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks
            if compile_number == 1:  # cold: the bodies are traced, and leave the count to the backend
                assert traced_bodies and all(counted and fake for _, counted, fake in traced_bodies)
            else:  # warm: a cache hit, no body traced, counted all the same
                assert inductor["fxgraph_cache_hit"] + aot["autograd_cache_hit"] > hits
                assert traced_bodies == []
    torch.testing.assert_close(out, bitlower.binary_attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_explain_reports_the_fallback_of_each_rewritten_site(cuda_view):
    torch._dynamo.reset()
    report = explain(sdpa, *_qkv(8))
    assert report.counts["rewritten"] == 1
    assert report.fallbacks() == {HEAD_DIM_8: 1}
    assert report.sites[0].details["kernel_fallback"] == [HEAD_DIM_8]
    assert "reference on CUDA: " + HEAD_DIM_8 in str(report)


@pytest.mark.gpu
def test_cuda_fallback_counted_once_per_compile_cold_or_warm(monkeypatch, tmp_path):
    """The same as above on a real CUDA graph, nothing patched: Inductor traces the CUDA bodies."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    q, k, v = (t.cuda() for t in _qkv(8))
    with torch._inductor.config.patch(fx_graph_cache=True):
        for compile_number in (1, 2):
            torch._dynamo.reset()
            before = dict(counters["fallback"])
            torch.compile(sdpa, backend="bitlower", fullgraph=True)(q, k, v)
            assert _fallbacks_since(before) == {HEAD_DIM_8: 1}, compile_number
    before = dict(counters["fallback"])
    bitlower.binary_attention(q, k, v)  # eager: counted per call
    assert _fallbacks_since(before) == {HEAD_DIM_8: 1}
