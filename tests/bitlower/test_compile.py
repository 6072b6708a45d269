"""A compiled (fullgraph=True) call equals eager, forward and backward, with no graph break."""
import pytest
import torch

import bitlower

CASES = [
    dict(weighting="mean_abs", grad_mode="ste"),
    dict(weighting="token", grad_mode="hamming", bias_kind="table"),
    dict(weighting="none", grad_mode="stopgrad", bias_kind="mask", pv_quant="int8"),
]


@pytest.mark.parametrize("options", CASES)
def test_compiled_equals_eager(case_factory, options):
    case = case_factory(options["weighting"], options.get("bias_kind", "none"), dtype=torch.float32,
                        requires_grad=True)
    kwargs = {k: case[k] for k in ("a", "b", "bias", "grid") if k in case}
    kwargs.update(weighting=options["weighting"], grad_mode=options["grad_mode"],
                  bias_kind=case["bias_kind"], pv_quant=options.get("pv_quant", "none"))

    def fn(q, k, v):
        return bitlower.binary_attention(q, k, v, **kwargs)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    eager_out = fn(case["q"], case["k"], case["v"])
    comp_out = compiled(case["q"], case["k"], case["v"])
    torch.testing.assert_close(comp_out, eager_out, rtol=1e-5, atol=1e-6)
    leaves = [case[n] for n in ("q", "k", "v", "a", "b", "bias") if n in case and case[n].requires_grad]
    g = torch.randn_like(eager_out)
    eager_grads = torch.autograd.grad(eager_out, leaves, g, allow_unused=True)
    comp_grads = torch.autograd.grad(comp_out, leaves, g, allow_unused=True)
    for e, c in zip(eager_grads, comp_grads):
        if e is None:
            assert c is None or not c.any()
        else:
            torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)


def test_compiled_module_has_no_graph_break():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(32, 96)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, 2, 16).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, D)
            return bitlower.binary_attention(q, k, v).transpose(1, 2).reshape(b, n, 32)

    explanation = torch._dynamo.explain(Block())(torch.randn(2, 9, 32))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("scale", ["default", "size", "argument"])
def test_dynamic_shapes_compile_as_one_graph_and_equal_eager(scale):
    """With ``dynamic=True`` the scale is a ``SymFloat`` (``D ** -0.5``, ``D``, a float input):
    validating it must not break the graph (it failed at ``math.isfinite``). Dynamo's trace is
    what is tested, so the backend is ``eager``; gradients under dynamic shapes are checked in
    ``tests/passes/test_dynamic_shapes.py``."""
    def fn(q, k, v, s):
        given = {"default": None, "size": q.shape[-1], "argument": s}[scale]
        return bitlower.binary_attention(q, k, v, scale=given)

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 24, generator=gen) for _ in range(3))
    comp_out = torch.compile(fn, backend="eager", fullgraph=True, dynamic=True)(q, k, v, 0.3)
    torch.testing.assert_close(comp_out, fn(q, k, v, 0.3), rtol=1e-5, atol=1e-6)


def test_kernel_options_reach_the_plan_per_compile_warm_cache_included():
    """Two compiles of one function under different ``KernelOptions`` get their own graph and cache entry.

    The options are an operator argument, so the graph the compiler receives (and AOTAutograd keys its
    cache on) carries them: a compile with other options misses the cache, and a warm compile with the
    first options replays the first entry, whose operator call asks the plan for that forward. The plan is
    read with a CUDA device (this machine has none): ``v1`` and ``v2`` at D 64 with mean_abs.
    """
    from torch._dynamo.utils import counters as dynamo_counters
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.utils import fresh_cache

    from bitlower.codegen import KernelOptions
    from bitlower.codegen.plan import CallFacts, DeviceFacts, plan_forward
    from bitlower.spec import CallSpec

    operator = torch.ops.bitlower.binary_attention_fwd.default
    seen = []

    def recording(gm, example_inputs):  # the graph Inductor gets, before its caches
        for node in gm.graph.find_nodes(op="call_function", target=operator):
            seen.append(KernelOptions.decode(node.args[14]))
        return compile_fx(gm, example_inputs)

    def compiled(options):
        def fn(q, k, v):
            return bitlower.binary_attention(q, k, v, kernel_options=options)
        return torch.compile(fn, backend=recording, fullgraph=True)

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=gen) for _ in range(3))
    want = bitlower.binary_attention(q, k, v)
    aot = dynamo_counters["aot_autograd"]
    hits = lambda: (aot["autograd_cache_hit"], aot["autograd_cache_miss"])  # noqa: E731
    with fresh_cache():
        torch._dynamo.reset()
        start = hits()
        for options in (KernelOptions(forward="v1"), KernelOptions(forward="v2"), KernelOptions(forward="v1")):
            torch._dynamo.reset()  # the third compile is warm: Inductor's cache holds the first's graph
            torch.testing.assert_close(compiled(options)(q, k, v), want, rtol=1e-5, atol=1e-6)
        hit, miss = (b - a for a, b in zip(start, hits()))
    assert [o.forward for o in seen] == ["v1", "v2", "v1"]
    # AOTAutograd's cache (a hit skips the operator body, where a module switch used to be read): v2 did not
    # replay v1's entry, the warm v1 did. (On CPU both bodies trace to the same reference code, so
    # Inductor's FX-graph cache below it may share one entry: there is no kernel to tell apart.)
    assert (hit, miss) == (1, 2)
    gpu = DeviceFacts(cuda=True, capability=(9, 0))
    call, spec = CallFacts.of(q, k, v), CallSpec(scale=0.125)
    assert [plan_forward(call, spec, gpu, o).kernel for o in seen] == ["v1", "v2", "v1"]
