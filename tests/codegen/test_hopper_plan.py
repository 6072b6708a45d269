"""The Hopper forward inside the operator: ``bitlower::hopper_fwd``'s fake metadata and the compiled path.

CPU: the fake implementation gives, for every output, the shape, dtype and strides of the real launcher
(run on CPU tensors with its launches stubbed: the outputs stay uninitialised, their metadata is real)
and the shapes and dtypes of the operator's contract (``bitlower::binary_attention_fwd``'s fake and the
reference); the operator body's hopper plan reaches the opaque op eagerly and in a ``fullgraph=True``
graph (a CPU stand-in kernel of the op). GPU (``-m gpu``, not yet run): ``torch.compile(fullgraph=True)`` of ``binary_attention``
with ``KernelOptions(forward="hopper")`` runs the Gluon kernel and matches eager.
"""
from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import bitlower
from bitlower import ops, reference
from bitlower.codegen import KernelOptions
from bitlower.codegen.hopper import launcher, op
from bitlower.codegen.hopper.op import hopper_forward
from bitlower.codegen.plan import CallFacts, DeviceFacts, ForwardPlan, plan_forward
from bitlower.counters import counters
from bitlower.spec import CallSpec

CASES = [
    dict(dim=64, dim_v=64, weighting="mean_abs", save_bits=True),
    dict(dim=64, dim_v=32, weighting="none", save_bits=False),
    dict(dim=72, dim_v=72, weighting="token", save_bits=True, grad_mode="hamming"),
    dict(dim=72, dim_v=40, weighting="mean_abs", save_bits=False, bias_kind="dense"),
    dict(dim=64, dim_v=48, weighting="token", save_bits=True, bias_kind="table"),
    dict(dim=64, dim_v=64, weighting="none", save_bits=True, bias_kind="mask", grad_mode="stopgrad"),
]


def _call(helpers, case):
    case = dict(case)
    save_bits, dim, dim_v = case.pop("save_bits"), case.pop("dim"), case.pop("dim_v")
    q, k, v, a, b, bias, spec = helpers.make_call(2, 3, 13, 13, dim, dim_v, dtype=torch.bfloat16, **case)
    return q, k, v, a, b, bias, dataclasses.replace(spec, save_bits=save_bits)


class _NoLaunch:
    """Stands in for ``torch.library.wrap_triton(kernel)``: ``[grid](...)`` does nothing."""

    def __init__(self, kernel):
        pass

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _launcher_outputs(call):
    """The real launcher's outputs on CPU tensors, its kernels stubbed (metadata only)."""
    with mock.patch("torch.library.wrap_triton", _NoLaunch), \
            mock.patch.object(launcher, "_descriptor", lambda tensor, block: None), \
            mock.patch.object(launcher, "_launch", lambda kernel, grid, args, kwargs: None):
        return launcher.launch_hopper_forward(*call)


def _meta(outputs):
    return [(tuple(t.shape), t.dtype, tuple(t.stride())) for t in outputs]


class _OpArgs(TorchDispatchMode):
    """Records the arguments of every ``bitlower::hopper_fwd`` call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.bitlower.hopper_fwd.default:
            self.seen.append(args)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fake_outputs_are_the_launchers_and_the_contracts(case, helpers):
    call = _call(helpers, case)
    q, k, v, a, b, bias, spec = call
    real = _launcher_outputs(call)
    static_max = case["weighting"] != "none"  # both values cross
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake_call = [None if t is None else mode.from_tensor(t) for t in call[:6]]
        with _OpArgs() as recorded:
            fake = hopper_forward(*fake_call, spec, ForwardPlan("hopper", None, 2, static_max, 64, 64))
        contract = torch.ops.bitlower.binary_attention_fwd(*fake_call, *spec.op_args(), spec.save_bits)
    (args,) = recorded.seen
    assert CallSpec.from_op_args(*args[6:14]) == spec and args[14] is static_max
    assert len(fake) == len(real) == 9
    assert _meta(fake) == _meta(real)
    out_fake = fake[0]  # (B, H, N, Dv) in (B, N, H, Dv) storage, as SDPA's; the rest contiguous
    assert out_fake.transpose(1, 2).is_contiguous() and all(t.is_contiguous() for t in fake[1:])
    assert [(tuple(t.shape), t.dtype) for t in fake] == [(tuple(t.shape), t.dtype) for t in contract]
    ref = ops._drop_bits(reference.forward(*call[:6], spec), spec)
    assert [(tuple(t.shape), t.dtype) for t in fake] == [(tuple(t.shape), t.dtype) for t in ref]
    words = fake[2].shape[-1]
    assert words == (3 if case["dim"] == 72 else 2) * spec.save_bits  # 32-bit words of D channels


def test_the_implementation_rebuilds_the_spec(helpers):
    """``run_flat`` (the op's CUDA implementation) hands the launcher the caller's spec and static_max."""
    call = _call(helpers, CASES[4])
    spec = call[-1]
    seen = {}

    def record(*args, static_max):
        seen.update(spec=args[-1], static_max=static_max)
        return _launcher_outputs(args)

    with mock.patch.object(op, "launch_hopper_forward", record):
        out = op.run_flat(*call[:6], *spec.op_args(), spec.save_bits, False, "")
    assert seen == dict(spec=spec, static_max=False) and len(out) == 9


_CPU_STUB = {"on": False}  # the test's CPU kernel of bitlower::hopper_fwd answers only while this is set


def _cpu_stub(q, k, v, a, b, bias, *flat):
    """A CPU stand-in for the op's CUDA kernel: the launcher's outputs (stubbed), out and lse the reference's."""
    if not _CPU_STUB["on"]:
        raise NotImplementedError("bitlower::hopper_fwd runs on CUDA tensors")
    _CPU_STUB["calls"] += 1
    spec = CallSpec.from_op_args(*flat[:8])
    outputs = _launcher_outputs((q, k, v, a, b, bias, spec))
    ref = reference.forward(q, k, v, a, b, bias, spec)
    for t in outputs[2:]:
        t.zero_()
    return (outputs[0].copy_(ref[0]), outputs[1].copy_(ref[1]), *outputs[2:])


def test_the_operator_routes_the_hopper_plan_through_the_opaque_op_when_compiled(helpers, monkeypatch):
    """CPU simulation of the CUDA route: the op body's hopper plan reaches ``bitlower::hopper_fwd``, eagerly
    and inside a ``fullgraph=True`` graph (one opaque node), and its outputs come back in place."""
    if not _CPU_STUB.get("registered"):
        torch.library.register_kernel("bitlower::hopper_fwd", "cpu", _cpu_stub)
        _CPU_STUB["registered"] = True
    plan = ForwardPlan("hopper", None, 2, True, 64, 64)
    asked = ops._kernels_for
    monkeypatch.setattr(ops, "_kernels_for", lambda check, *args, **kwargs: plan if check == "unsupported_reason"
                        else asked(check, *args, **kwargs))
    q, k, v, *_ = helpers.make_call(2, 3, 17, 17, 64, 48, dtype=torch.bfloat16)
    attend = lambda q, k, v: bitlower.binary_attention(q, k, v, grad_mode="hamming")  # noqa: E731
    _CPU_STUB.update(on=True, calls=0)
    try:
        eager = attend(q, k, v)
        assert _CPU_STUB["calls"] == 1
        compiled = torch.compile(attend, fullgraph=True)(q, k, v)
    finally:
        _CPU_STUB["on"] = False
    assert _CPU_STUB["calls"] == 2  # the compiled graph ran the op once (tracing ran only its fake)
    expected = reference.forward(q, k, v, None, None, None, CallSpec(scale=64 ** -0.5, grad_mode="hamming"))[0]
    assert torch.equal(eager, expected) and torch.equal(compiled, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("noncontig", [False, True], ids=["aligned_v", "copied_v"])
@pytest.mark.parametrize("stats", ["op", "graph"])
def test_compiled_hopper_forward_matches_eager(noncontig, stats, helpers):
    options = KernelOptions(forward="hopper", hopper_stats=stats)
    call = helpers.make_call(2, 3, 197, 197, 64, 64, dtype=torch.bfloat16, device="cuda", noncontig=noncontig,
                             grad_mode="hamming")
    q, k, v, a, b, bias, spec = call
    plan = plan_forward(CallFacts.of(q, k, v), spec, DeviceFacts.of(q.device), options)
    if isinstance(plan, str):
        pytest.skip(plan)
    launches = []
    original = launcher._launch
    count = lambda kernel, grid, args, kwargs: (launches.append(grid), original(kernel, grid, args, kwargs))  # noqa: E731
    attend = lambda q, k, v: bitlower.binary_attention(q, k, v, grad_mode="hamming", kernel_options=options)  # noqa: E731
    counters.clear()
    with mock.patch.object(launcher, "_launch", count):
        eager = attend(q, k, v)
        assert len(launches) == 1  # the Gluon kernel ran eagerly
        compiled = torch.compile(attend, fullgraph=True)(q, k, v)
        torch.cuda.synchronize()
    assert not counters["fallback"], dict(counters["fallback"])
    assert len(launches) >= 2  # and inside the compiled graph (the opaque bitlower::hopper_fwd)
    ref64 = reference.forward(q.double(), k.double(), v.double(), None, None, None, spec)[0]
    ref_lp = reference.forward(q, k, v, None, None, None, spec)[0]
    assert helpers.rel_err(eager, ref64) <= 3 * helpers.rel_err(ref_lp, ref64) + 1e-6
    assert helpers.rel_err(compiled, eager) <= 1e-2


@pytest.mark.gpu
def test_compiled_hopper_forward_feeds_the_backward(helpers):
    """Training: the hopper forward's saved bits and scalars drive the default backward, compiled and eager."""
    options = KernelOptions(forward="hopper")
    q, k, v, a, b, bias, spec = helpers.make_call(2, 3, 197, 197, 64, 64, dtype=torch.bfloat16, device="cuda")
    plan = plan_forward(CallFacts.of(q, k, v), spec, DeviceFacts.of(q.device), options)
    if isinstance(plan, str):
        pytest.skip(plan)
    q.requires_grad_(True)
    attend = lambda q, k, v: bitlower.binary_attention(q, k, v, kernel_options=options)  # noqa: E731
    counters.clear()
    out = torch.compile(attend, fullgraph=True)(q, k, v)
    (dq,) = torch.autograd.grad(out, (q,), torch.ones_like(out))
    eager = attend(q, k, v)
    (dq_eager,) = torch.autograd.grad(eager, (q,), torch.ones_like(eager))
    assert not counters["fallback"], dict(counters["fallback"])
    assert helpers.rel_err(out, eager) <= 1e-2 and helpers.rel_err(dq, dq_eager) <= 1e-2
    default = bitlower.binary_attention(q, k, v)  # the tl.dot forward, the same backward
    (dq_default,) = torch.autograd.grad(default, (q,), torch.ones_like(default))
    assert helpers.rel_err(dq_eager, dq_default) <= 1e-2


@pytest.mark.gpu
def test_the_default_plan_runs_the_gluon_forward_on_sm90(helpers):
    """D = Dv = 64, bf16, 2**31 score work, on an sm_90 GPU with Triton 3.6: the default forward is the Gluon kernel."""
    q, k, v, a, b, bias, spec = helpers.make_call(4, 8, 1024, 1024, 64, 64, dtype=torch.bfloat16, device="cuda")
    if isinstance(plan_forward(CallFacts.of(q, k, v), spec, DeviceFacts.of(q.device), KernelOptions(forward="hopper")),
                  str):
        pytest.skip("this GPU or Triton does not run the Gluon forward")
    launches = []
    original = launcher._launch
    count = lambda kernel, grid, args, kwargs: (launches.append(grid), original(kernel, grid, args, kwargs))  # noqa: E731
    with mock.patch.object(launcher, "_launch", count):
        out = bitlower.binary_attention(q, k, v)
    assert len(launches) == 1
    ref64 = reference.forward(q.double(), k.double(), v.double(), None, None, None, spec)[0]
    ref_lp = reference.forward(q, k, v, None, None, None, spec)[0]
    assert helpers.rel_err(out, ref64) <= 3 * helpers.rel_err(ref_lp, ref64) + 1e-6


def _main_stub(q_signs, k_signs, a_rows, b_rows, q_sums, k_sums, b_max, v, bias, dim, *flat):
    """A CPU stand-in for ``bitlower::hopper_main``'s CUDA kernel: the launcher's outputs, its launch stubbed."""
    _CPU_STUB["main_calls"] += 1
    spec = CallSpec.from_op_args(*flat[:7])
    with mock.patch.object(launcher, "_descriptor", lambda tensor, block: None), \
            mock.patch.object(launcher, "_launch", lambda kernel, grid, args, kwargs: None):
        outputs = launcher.launch_hopper_main(q_signs, k_signs, a_rows, b_rows, q_sums, k_sums, b_max, v, bias, spec,
                                              dim, static_max=flat[7])
    return tuple(t.zero_() for t in outputs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_stats_in_the_graph_keeps_the_outputs_and_the_stats(case, helpers):
    """``hopper_stats="graph"``: the stats pass traced before ``bitlower::hopper_main`` gives the outputs of the
    launcher (metadata, on fake tensors) and, run (the interpreter's stats kernel, a stubbed main), the reference's
    bits and row scalars; the main operator sees the stats pass's signs and scalars."""
    call = _call(helpers, case)
    q, k, v, a, b, bias, spec = call
    plan = ForwardPlan("hopper", None, 2, True, 64, 64, stats_in_graph=True)
    real = _launcher_outputs(call)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode, mock.patch("torch.library.wrap_triton", _NoLaunch):
        fake_call = [None if t is None else mode.from_tensor(t) for t in call[:6]]
        fake = hopper_forward(*fake_call, spec, plan)  # the stats kernel's launch stubbed: its outputs' metadata
    assert _meta(fake) == _meta(real)
    if not _CPU_STUB.get("main_registered"):
        torch.library.register_kernel("bitlower::hopper_main", "cpu", _main_stub)
        _CPU_STUB["main_registered"] = True
    _CPU_STUB["main_calls"] = 0
    got = hopper_forward(*call[:6], spec, plan)
    assert _CPU_STUB["main_calls"] == 1
    ref = ops._drop_bits(reference.forward(*call[:6], spec), spec)
    for index in (2, 3, 4, 5):  # qbits, kbits, qclip, kclip from the stats pass
        assert torch.equal(got[index], ref[index])
    if case["weighting"] != "mean_abs":  # the eff rows (mean_abs': the kernel's, stubbed here)
        assert torch.allclose(got[6], ref[6].float()) and torch.allclose(got[7], ref[7].float())


def test_stats_in_the_graph_is_the_default_kernel_option():
    assert KernelOptions().hopper_stats == "graph"
    options = KernelOptions(forward="hopper", hopper_stats="op")
    assert KernelOptions.decode(options.encode()) == options
    with pytest.raises(ValueError, match="hopper_stats"):
        KernelOptions(hopper_stats="inside")

