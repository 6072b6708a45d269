"""GPU checks of the Hopper Gluon backward (hamming, stopgrad, ste) against a float64 reference (``pytest -m gpu``).

The saved state (packed bits, scalars, row state, lse, output) comes from the reference forward at the
working dtype on the GPU (or, in ``test_state_of_the_gluon_forward``, from the Gluon forward); the float64
golden is ``reference_backward`` on that state with dO, v, the scalars and the bias upcast, so only the
backward is compared. Outputs are NaN-poisoned before each launch. Bounds as ``test_gpu.py``'s gradients:
``1e-2`` relative for bf16/fp16 (``delta_i = dO_i . O_i`` takes the forward's output rounded to the working
dtype, ``2**-9`` relative per row, dV's P operand and ste's dS operands are rounded likewise; over >= 17
terms of mixed sign the relative error of the sums stays near that, 5x margin); a head bias's gradient,
``sum dS = 0`` up to rounding, against the size of the terms it sums, and likewise every gradient linear
in dS when M = 1 (one key: P = 1, dS = 0 exactly, the kernel's rounding-sized).
"""
from __future__ import annotations

import pytest
import torch

from bitlower import reference, reference_backward
from bitlower.codegen.hopper.backward_launcher import launch_hopper_backward
from bitlower.codegen.hopper.backward_support import (HopperBackwardConfig, hopper_backward_config,
                                                      hopper_backward_unsupported)
from bitlower.codegen.plan import CallFacts, DeviceFacts
from bitlower.relpos import table_rows
from bitlower.spec import CallSpec

pytestmark = pytest.mark.gpu

SHAPES = [(2, 3, 1, 64, 64), (2, 3, 1, 64, 64, 17), (2, 3, 17, 64, 64, 1), (2, 3, 17, 64, 64), (2, 3, 197, 64, 64),
          (1, 2, 1000, 64, 64), (2, 2, 17, 128, 128),
          (2, 2, 197, 128, 128), (1, 2, 1000, 128, 128), (1, 2, 333, 72, 40), (2, 2, 17, 64, 64, 100),
          (1, 2, 1000, 128, 128, 77)]  # (B, H, N, D, Dv[, M]): M = N unless given
GRAD_BOUND = {torch.bfloat16: 1e-2, torch.float16: 1e-2}
NAMES = ("dq", "dk", "dv", "da", "db", "dbias")
CONFIGS = [None, HopperBackwardConfig(64, 32, 2), HopperBackwardConfig(128, 32, 2), HopperBackwardConfig(64, 64, 2),
           HopperBackwardConfig(64, 32, 3)]


def _poison():
    """Fill freed allocator blocks with NaN, so unwritten kernel outputs show up as NaN."""
    junk = torch.empty(64 * 2**20, device="cuda").fill_(float("nan"))
    del junk


def _rel(x, ref):
    x, ref = x.double(), ref.double()
    return float("inf") if torch.isnan(x).any() else float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def _call(shape, dtype, weighting, bias_kind, grad_mode):
    """Random operands; q, k, v and dO permuted from (B, L, H, D) storage (TMA-aligned, not contiguous)."""
    bsz, heads, n, dim, dim_v = shape[:5]
    m = shape[5] if len(shape) > 5 else n
    q = torch.randn(bsz, n, heads, dim, device="cuda").to(dtype).transpose(1, 2)
    k = torch.randn(bsz, m, heads, dim, device="cuda").to(dtype).transpose(1, 2)
    v = torch.randn(bsz, m, heads, dim_v, device="cuda").to(dtype).transpose(1, 2)
    a = b = bias = None
    grid = ()
    if weighting == "token":
        a = torch.rand(bsz, heads, n, device="cuda") + 0.5
        b = torch.rand(bsz, heads, m, device="cuda") + 0.5
    if bias_kind == "head":
        bias = torch.randn(heads, device="cuda").to(dtype)
    elif bias_kind == "dense":
        bias = torch.randn(1, heads, n, m, device="cuda").to(dtype)
    elif bias_kind == "mask":
        bias = torch.rand(bsz, 1, n, m, device="cuda") > 0.3
        bias[..., 0] = True
    elif bias_kind == "table":
        grid = (14, 14, 1)
        bias = (0.5 * torch.randn(table_rows(14, 14), heads, device="cuda")).to(dtype)
    spec = CallSpec(scale=dim ** -0.5, weighting=weighting, bias_kind=bias_kind, grid=grid, grad_mode=grad_mode)
    return q, k, v, a, b, bias, spec


def _needs(call):
    q, k, v, a, b, bias, spec = call
    return [True, True, True, a is not None, b is not None, bias is not None and bias.is_floating_point()]


def _check(call, state=None, config=None, do=None):
    q, k, v, a, b, bias, spec = call
    facts = CallFacts.of(q, k, v, bias)
    reason = hopper_backward_unsupported(facts, spec, DeviceFacts.of(q.device))
    if reason:
        pytest.skip(reason)
    out, *saved = state or reference.forward(q, k, v, a, b, bias, spec)
    if do is None:
        do = torch.randn(q.shape[0], q.shape[2], q.shape[1], v.shape[-1], device="cuda").to(v.dtype).transpose(1, 2)
    needs = _needs(call)
    _poison()
    got = launch_hopper_backward(do, v, bias, *saved, spec, q.shape[-1], needs, out=out, config=config)
    torch.cuda.synchronize()
    up = lambda t: t if t is None or not t.is_floating_point() else t.double()  # noqa: E731 - masks stay bool
    lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state = saved
    ref = reference_backward.backward(do.double(), v.double(), up(bias), lse, qbits, kbits, qclip, kclip,
                                      a_eff.double(), b_eff.double(), row_state, spec, q.shape[-1], needs)
    for name, g, r in zip(NAMES, got, ref):
        assert (g is None) == (r is None), name
        if g is None:
            continue
        assert g.shape == r.shape, (name, g.shape, r.shape)
        if (name == "dbias" and spec.bias_kind == "head") or (name != "dv" and k.shape[2] == 1):  # dS sums to 0
            assert not torch.isnan(g).any() and (g.double() - r).abs().max() <= 1e-3 * ref[2].abs().sum(), name
            continue
        assert _rel(g, r) <= GRAD_BOUND[v.dtype], (name, _rel(g, r))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weighting", ["mean_abs", "none", "token"])
def test_hamming_weightings_against_float64(shape, weighting):
    _check(_call(shape, torch.bfloat16, weighting, "none", "hamming"))


@pytest.mark.parametrize("bias_kind", ["head", "dense", "mask"])
@pytest.mark.parametrize("weighting", ["mean_abs", "token"])
@pytest.mark.parametrize("shape", [(2, 3, 1, 64, 64), (2, 3, 17, 64, 64), (1, 2, 1000, 64, 64), (2, 2, 197, 128, 128),
                                   (2, 2, 17, 64, 64, 100)], ids=str)
def test_hamming_biases_against_float64(shape, weighting, bias_kind):
    _check(_call(shape, torch.bfloat16, weighting, bias_kind, "hamming"))


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("weighting", ["token", "mean_abs"])
def test_table_bias(dim, weighting):
    _check(_call((2, 3, 197, dim, dim), torch.bfloat16, weighting, "table", "hamming"))


@pytest.mark.parametrize("bias_kind", ["none", "head", "dense", "mask"])
@pytest.mark.parametrize("shape", [(2, 3, 17, 64, 64), (1, 2, 1000, 128, 128)], ids=str)
def test_stopgrad(shape, bias_kind):
    _check(_call(shape, torch.bfloat16, "token", bias_kind, "stopgrad"))


STE_SHAPES = [(2, 3, 1, 64, 64, 17), (2, 3, 17, 64, 64), (2, 3, 197, 64, 64), (1, 2, 1000, 64, 64),
              (2, 2, 17, 128, 128, 100), (2, 2, 197, 128, 128), (1, 2, 1000, 128, 128, 77), (1, 2, 333, 32, 40)]


@pytest.mark.parametrize("shape", STE_SHAPES, ids=str)
@pytest.mark.parametrize("weighting", ["mean_abs", "none", "token"])
def test_ste_weightings_against_float64(shape, weighting):
    _check(_call(shape, torch.bfloat16, weighting, "none", "ste"))


@pytest.mark.parametrize("bias_kind", ["head", "dense", "mask", "table"])
@pytest.mark.parametrize("dim", [64, 128])
def test_ste_biases_against_float64(dim, bias_kind):
    _check(_call((2, 3, 197, dim, dim), torch.bfloat16, "token", bias_kind, "ste"))


def test_ste_refuses_three_sign_chunks():
    q, k, v, a, b, bias, spec = _call((1, 2, 64, 72, 72), torch.bfloat16, "mean_abs", "none", "ste")
    reason = hopper_backward_unsupported(CallFacts.of(q, k, v), spec, DeviceFacts.of(q.device))
    assert "one power-of-two chunk" in reason


@pytest.mark.parametrize("shape", [(2, 3, 197, 64, 64), (1, 2, 1000, 128, 128)], ids=str)
def test_float16(shape):
    _check(_call(shape, torch.float16, "mean_abs", "dense", "hamming"))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dim", [64, 128])
def test_configs(config, dim):
    _check(_call((1, 2, 1000, dim, dim, 333), torch.bfloat16, "token", "head", "hamming"), config=config)


STAGED = HopperBackwardConfig(staged_rows=True)


@pytest.mark.parametrize("case", [("mean_abs", "none", "hamming"), ("token", "head", "hamming"),
                                  ("token", "mask", "stopgrad"), ("mean_abs", "dense", "ste"), ("none", "head", "ste")],
                         ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 197, 64, 64), (1, 2, 1000, 128, 128), (1, 2, 333, 72, 40),
                                   (2, 2, 17, 64, 64, 100)], ids=str)
def test_staged_rows(case, shape):
    """``staged_rows``: the per-query m2, l2, delta, a through shared memory (padded queries: m2 = +inf)."""
    weighting, bias_kind, grad_mode = case
    _check(_call(shape, torch.bfloat16, weighting, bias_kind, grad_mode), config=STAGED)


@pytest.mark.parametrize("case", [("mean_abs", "none", "hamming"), ("token", "head", "ste")], ids=str)
def test_the_tile_tables_staged_rows_from_4096_queries(case):
    """The default config at 4096 queries (``staged_rows`` on: ``backward_support.STAGED_ROWS_FROM``)."""
    assert hopper_backward_config(4096, 64, 64).staged_rows
    _check(_call((1, 2, 4096, 64, 64), torch.bfloat16, *case))


def test_staged_rows_of_a_fully_masked_row():
    call = _call((1, 2, 197, 64, 64), torch.bfloat16, "token", "mask", "hamming")
    call[5][:, :, 5] = False  # row 5 keeps no key: l2 = -inf, clamped to -FLT_MAX by staged_query_rows
    _check(call, config=STAGED)


@pytest.mark.parametrize("config", [None, STAGED], ids=str)
def test_capture_replays_the_eager_gradients(config):
    """The launcher under CUDA-graph capture (no host sync, no host-to-device copy), replayed: eager's gradients."""
    q, k, v, a, b, bias, spec = call = _call((2, 3, 197, 64, 64), torch.bfloat16, "token", "head", "hamming")
    if hopper_backward_unsupported(CallFacts.of(q, k, v, bias), spec, DeviceFacts.of(q.device)):
        pytest.skip("the Gluon backward cannot run here")
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    do = torch.randn_like(out)
    run = lambda: launch_hopper_backward(do, v, bias, *saved, spec, q.shape[-1], _needs(call), out=out,  # noqa: E731
                                         config=config)
    eager = [None if g is None else g.clone() for g in run()]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    for name, g, c in zip(NAMES, eager, captured):
        assert (g is None) == (c is None), name
        if g is not None:
            assert _rel(c, g) <= 1e-5, name  # da, db and dbias are atomics: their order may differ


def test_fully_masked_row_adds_nothing():
    """A query row without a kept key: l2 = -inf, p = 0 (not NaN) in every key tile."""
    call = _call((1, 2, 197, 64, 64), torch.bfloat16, "token", "mask", "hamming")
    call[5][:, :, 5] = False  # row 5 keeps no key
    _check(call)


def test_misaligned_grad_out_is_copied():
    """dO at a 2-byte storage offset cannot be read by TMA: the launcher copies it."""
    call = _call((2, 3, 197, 64, 64), torch.bfloat16, "mean_abs", "none", "hamming")
    q, v = call[0], call[2]
    flat = torch.empty(q.shape[0] * q.shape[1] * q.shape[2] * v.shape[-1] + 1, device="cuda", dtype=v.dtype)
    do = flat[1:].view(q.shape[0], q.shape[1], q.shape[2], v.shape[-1]).normal_()
    _check(call, do=do)


@pytest.mark.parametrize("case", [("token", "dense", "hamming"), ("mean_abs", "none", "ste"),
                                  ("token", "table", "hamming"), ("mean_abs", "mask", "stopgrad")], ids=str)
def test_state_of_the_gluon_forward(case):
    """The backward on what the Gluon forward saved (its static row maximum in the row state): the plan's
    default pair on sm_90, here at N 197 (the kernels do not depend on N for this)."""
    from bitlower.codegen.hopper import hopper_tensors_unsupported, launch_hopper_forward

    call = _call((2, 3, 197, 64, 64), torch.bfloat16, *case)
    q, k, v, a, b, bias, spec = call
    if hopper_tensors_unsupported(q, k, v, a, b, bias, spec):
        pytest.skip("the Gluon forward cannot run here")
    _check(call, state=launch_hopper_forward(q, k, v, a, b, bias, spec))


def test_compiled_opaque_op_matches_eager():
    """``bitlower::hopper_bwd`` under torch.compile(fullgraph=True) gives the eager gradients."""
    from bitlower.codegen.hopper.backward_op import hopper_backward

    q, k, v, a, b, bias, spec = _call((2, 3, 197, 64, 64), torch.bfloat16, "token", "head", "hamming")
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    do = torch.randn_like(out)
    needs = [True, True, True, True, True, True]

    def run(do_, v_, bias_):
        return hopper_backward(do_, v_, bias_, *saved, spec, q.shape[-1], needs, out=out)

    eager = run(do, v, bias)
    compiled = torch.compile(run, fullgraph=True)(do, v, bias)
    for name, g, c in zip(NAMES, eager, compiled):
        assert (g is None) == (c is None), name
        if g is not None:
            assert _rel(c, g) <= 1e-5, name  # da and the dense gradients are atomics: order may differ


def test_stages_around_the_opaque_op_are_user_kernels_of_the_graph():
    """Traced as Inductor traces the backward operator's body, the row dots, sign tiles and dq / dk passes are user
    Triton kernels of the graph beside the one opaque ``bitlower::hopper_bwd`` node: Inductor launches them, not
    Triton's JIT binder inside the operator (~100 us of host time each)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from bitlower.codegen.hopper.backward_op import hopper_backward

    q, k, v, a, b, bias, spec = _call((2, 3, 197, 64, 64), torch.bfloat16, "mean_abs", "none", "hamming")
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    do = torch.randn_like(out)
    needs = [True, True, True, False, False, False]

    def run(do_, v_, out_, *saved_):
        return hopper_backward(do_, v_, None, *saved_, spec, q.shape[-1], needs, out=out_)

    graph = make_fx(run, tracing_mode="fake")(do, v, out, *saved)
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert targets.count("bitlower.hopper_bwd.default") == 1
    assert sum("triton_kernel_wrapper" in t for t in targets) == 5, targets  # row dots, 2 sign tiles, dq, dk
    for name, g, c in zip(NAMES, run(do, v, out, *saved), graph(do, v, out, *saved)):
        assert (g is None) == (c is None), name
        if g is not None:
            assert _rel(c, g) <= 1e-5, name
