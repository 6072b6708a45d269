"""CPU checks of the Hopper Gluon backward's host side: the plan hook, the predicates, the launcher's assembly.

Runs in CI's main pytest (Triton 3.9, interpreter): nothing here compiles Gluon. The launcher test runs the
real ``launch_hopper_backward`` (its tl kernels, ``_row_dots``, the float8 sign unpack and the dense table,
under the interpreter) with the Gluon launch replaced by ``_emulate``: the kernel's module notation
(``kernel_bwd``) written in PyTorch, reading every pointer/stride argument exactly as the kernel does. It
shows that the launcher's flags, buffers, strides, the mean_abs chain and the bias gradients' final shapes
give ``reference_backward``'s gradients; the Gluon code itself is checked by ``test_gpu_hopper_bwd.py``.
Bound as ``test_backward.py``: float32 on both sides, different summation orders, ``1e-5`` relative.
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from bitlower import reference, reference_backward
from bitlower.codegen import KernelOptions
from bitlower.codegen.hopper import backward_launcher, backward_op, support
from bitlower.codegen.hopper.backward_support import (HopperBackwardConfig, hopper_backward_config,
                                                      hopper_backward_unsupported)
from bitlower.codegen.plan import BackwardPlan, CallFacts, DeviceFacts, plan_backward
from bitlower.spec import CallSpec

SM90 = DeviceFacts(cuda=True, capability=(9, 0))
FP32_BOUND = 1e-5
LOG2E, FLT_MAX, TINY = 1.4426950408889634, 3.4028234663852886e38, 5.421010862427522e-20
NAMES = ("dq", "dk", "dv", "da", "db", "dbias")


@pytest.fixture
def gluon_ok(monkeypatch):
    """The Triton-API check passes (CI runs Triton 3.9; the other reasons are what is under test)."""
    monkeypatch.setattr(support, "gluon_unavailable", lambda version=None: None)


def _facts(n=197, m=197, dim=64, dim_v=64, dtype=torch.bfloat16):
    return CallFacts(2, 3, n, m, dim, dim_v, dtype, 2 * 3 * n * dim, False)


@pytest.mark.parametrize("facts, device, kernel", [
    (dict(), SM90, "hopper"),  # measured faster at N 197 (session 18)
    (dict(n=4096, m=4096), SM90, "hopper"),  # measured faster at D 64 (session 8)
    (dict(n=64, m=4096), SM90, "hopper"),
    (dict(n=1680, m=1680), SM90, "hopper"),  # measured faster at N 1680 (session 18)
    (dict(n=256, m=256, dim=72, dim_v=72), SM90, "hopper"),  # hamming at DiT's D 72 (session 18)
    (dict(n=4096, m=4096, dim=128, dim_v=128), SM90, "hopper"),  # measured faster at D 128 (session 9)
    (dict(n=4096, m=4096, dim=256, dim_v=256), SM90, "tldot"),  # D > 128: the portable kernels
    (dict(n=4096, m=4096, dtype=torch.float32), SM90, "tldot"),  # the Gluon backward takes 16-bit only
    (dict(n=4096, m=4096), DeviceFacts(cuda=True, capability=(8, 0)), "tldot"),
])
def test_default_plan_takes_the_gluon_backward_on_sm90(facts, device, kernel, gluon_ok):
    plan = plan_backward(_facts(**facts), CallSpec(scale=0.125, grad_mode="hamming"), device)
    assert isinstance(plan, BackwardPlan) and plan.kernel == kernel, plan


def test_default_plan_without_the_gluon_api_is_the_tl_dot_backward():
    """CI's Triton (3.9) has another Gluon API: the default never picks a kernel that cannot build."""
    plan = plan_backward(_facts(n=4096, m=4096), CallSpec(scale=0.125, grad_mode="hamming"), SM90)
    assert isinstance(plan, BackwardPlan) and plan.kernel == "tldot"


def test_tldot_option_forces_the_portable_backward(gluon_ok):
    plan = plan_backward(_facts(n=4096, m=4096), CallSpec(scale=0.125, grad_mode="ste"), SM90,
                         KernelOptions(backward="tldot"))
    assert isinstance(plan, BackwardPlan) and plan.kernel == "tldot"


@pytest.mark.parametrize("mode", ["hamming", "stopgrad", "ste"])
@pytest.mark.parametrize("weighting, bias_kind", [("mean_abs", "none"), ("none", "head"), ("token", "dense"),
                                                  ("token", "table"), ("mean_abs", "mask")])
def test_hopper_plan_when_asked(mode, weighting, bias_kind, gluon_ok):
    spec = CallSpec(scale=0.125, grad_mode=mode, weighting=weighting, bias_kind=bias_kind,
                    grid=(14, 14, 1) if bias_kind == "table" else ())
    plan = plan_backward(_facts(), spec, SM90, KernelOptions(backward="hopper"))
    assert isinstance(plan, BackwardPlan) and plan.kernel == "hopper", plan


@pytest.mark.parametrize("facts, spec, device, words", [
    (dict(dim=72), dict(grad_mode="ste"), SM90, "one power-of-two chunk"),
    (dict(), dict(grad_mode="hamming", pv_quant="int8"), SM90, "pv_quant"),
    (dict(dtype=torch.float32), dict(grad_mode="hamming"), SM90, "float16/bfloat16"),
    (dict(dim=256), dict(grad_mode="hamming"), SM90, "D in [16, 128]"),
    (dict(dim_v=20), dict(grad_mode="hamming"), SM90, "multiple of 8"),
    (dict(m=100), dict(grad_mode="hamming", bias_kind="table", grid=(14, 14, 1)), SM90, "N == M"),
    (dict(), dict(grad_mode="hamming"), DeviceFacts(cuda=True, capability=(8, 0)), "compute capability 9.x"),
    (dict(), dict(grad_mode="hamming"), DeviceFacts(cuda=False), "CUDA"),
])
def test_hopper_plan_gives_the_reason(facts, spec, device, words, gluon_ok):
    reason = plan_backward(_facts(**facts), CallSpec(scale=0.125, **spec), device, KernelOptions(backward="hopper"))
    assert isinstance(reason, str) and words in reason, reason


def test_hopper_plan_names_the_triton_version():
    reason = hopper_backward_unsupported(_facts(), CallSpec(scale=0.125, grad_mode="hamming"), SM90,
                                         triton_version="3.9.0")
    assert "Hopper backward" in reason and "Triton 3.6" in reason and "3.9.0" in reason


def test_backward_option_is_validated_and_encoded():
    options = KernelOptions(backward="hopper")
    assert KernelOptions.decode(options.encode()) == options and "backward=hopper" in options.encode()
    with pytest.raises(ValueError, match="backward must be one of"):
        KernelOptions(backward="cudnn")


def test_config_table_and_validation():
    assert hopper_backward_config(4096, 64, 64) == HopperBackwardConfig(64, 32, 2, staged_rows=True)
    assert hopper_backward_config(4096, 128, 128) == HopperBackwardConfig(64, 32, 2, staged_rows=True)
    assert hopper_backward_config(4096, 64, 64, "ste") == HopperBackwardConfig(64, 32, 2, staged_rows=True)
    assert hopper_backward_config(1024, 64, 64) == HopperBackwardConfig(64, 32, 2)
    assert HopperBackwardConfig().num_warps == 4 and HopperBackwardConfig(128).num_warps == 8
    with pytest.raises(ValueError, match="block_m"):
        HopperBackwardConfig(block_m=32)
    with pytest.raises(ValueError, match="stages"):
        HopperBackwardConfig(stages=1)


def _probs(qs, ks, state, a, b, bias, sbb, sbh, sbn, sbm, heads, n, m, scale_log2, code, bsz, staged=None):
    """``(h, p)`` ``(B, H, N, M)`` float32 of the kernels' notation from their arguments; ``staged``: the
    ``staged_query_rows`` fields ``(m2, l2)`` (head shift and clamps applied) in place of the row state."""
    f32 = torch.float32
    h = qs.to(f32).view(bsz, heads, n, -1) @ ks.to(f32).view(bsz, heads, m, -1).transpose(-1, -2)  # (B, H, N, M)
    x = h * ((a.view(bsz, heads, n, 1) * scale_log2) * b.view(bsz, heads, 1, m))
    m2, l2 = state[..., 0], state[..., 1]  # (B, H, N)
    if code == 1:
        m2 = m2 - bias.view(1, heads, 1) * LOG2E
    if staged is not None:
        m2, l2 = staged
    if code in (3, 4):
        beta = torch.as_strided(bias, (bsz, heads, n, m), (sbb, sbh, sbn, sbm))
        if code == 3:
            x = torch.maximum(x + beta.to(f32) * LOG2E, beta.to(f32) * TINY - FLT_MAX)
        else:
            x = torch.where(beta, x, float("-inf"))
    return h, torch.exp2((x - m2.clamp_min(-FLT_MAX)[..., None]) - l2.clamp_min(-FLT_MAX)[..., None])


def _emulate(kernel, grid, args, kwargs):
    """The Gluon kernels' contracts in PyTorch (float32), from their arguments (descriptors are the tensors
    themselves here): the module notation of ``kernel_bwd`` and ``kernel_bwd_q``."""
    if kernel.__name__ == "_binary_attn_bwd_q_sm90_kernel":
        return _emulate_queries(grid, args, kwargs)
    (ks, qs, v, go, rows, state, delta, a, b, bias, gbias, dv, db, dac, da, dsk, dk,
     sbb, sbh, sbn, sbm, sgb, sgh, sgn, sgm, sdvb, sdvh, sdvm, heads, n, m, scale, scale_log2) = args
    f32, bsz = torch.float32, v.shape[0]
    assert not kwargs["NEED_DV"] or (sdvb, sdvh, sdvm) == dv.stride()[:3] and dv.stride(-1) == 1  # stored strided
    assert grid == (-(-m // (16 * kwargs["num_warps"])), bsz * heads)  # one 16-row wgmma slab per warp
    assert qs.dtype == ks.dtype and (qs.dtype == torch.bfloat16 or not kwargs["NEED_DK"])  # ste: bf16 signs
    staged = None
    if kwargs["STAGED_ROWS"]:  # the kernel reads m2, l2, delta, a from the staged rows instead
        fields = rows.view(bsz, heads, 4, -1)
        assert torch.all(fields[:, :, 0, n:] == float("inf"))  # padded queries: p = 0
        staged = fields[:, :, 0, :n], fields[:, :, 1, :n]
        delta, a = fields[:, :, 2, :n], fields[:, :, 3, :n].reshape(a.shape) if a.numel() else a
    h, p = _probs(qs, ks, state, a, b, bias, sbb, sbh, sbn, sbm, heads, n, m, scale_log2, kwargs["BIAS"], bsz,
                  staged)
    if kwargs["NEED_DV"]:
        dv.copy_(p.transpose(-1, -2) @ go.to(f32))
    ds = p * (go.to(f32) @ v.to(f32).transpose(-1, -2) - delta[..., None])
    dsh = ds * h
    if kwargs["NEED_DB"]:
        db.copy_(scale * (dsh * a.view(bsz, heads, n, 1)).sum(2, keepdim=True).transpose(-1, -2))
    if kwargs["NEED_DA_COLS"]:
        dac.copy_((scale * b.view(bsz, heads, m) * dsh.sum(2))[..., None])
    if kwargs["NEED_DA_ROWS"]:
        da += scale * (dsh * b.view(bsz, heads, 1, m)).sum(3, keepdim=True)
    if kwargs["HEAD_DBIAS"]:
        dsk.copy_(ds.sum(2))
    if kwargs["NEED_DK"]:  # raw sums sum_i dS_ij a_i sgn q_i (the kernel's wgmma operand is bf16(dS a))
        sq = qs.to(f32).view(bsz, heads, n, -1)[..., :kwargs["D"]]
        dk.copy_((ds * a.view(bsz, heads, n, 1)).transpose(-1, -2) @ sq)
    if kwargs["DENSE_DBIAS"]:
        idx = [torch.arange(size).view([-1 if d == k else 1 for k in range(4)]) * stride
               for d, (size, stride) in enumerate(zip((bsz, heads, n, m), (sgb, sgh, sgn, sgm)))]
        gbias.view(-1).index_add_(0, (idx[0] + idx[1] + idx[2] + idx[3]).flatten(), ds.flatten())


def _emulate_queries(grid, args, kwargs):
    """``_binary_attn_bwd_q_sm90_kernel``: ``dq_raw = sum_j dS_ij b_j sgn k_j`` (ste; the kernel's wgmma operand
    is bf16(dS b): float32 here, the test checks the assembly)."""
    qs, ks, go, v, state, delta, a, b, bias, dq, sbb, sbh, sbn, sbm, heads, n, m, scale_log2 = args
    f32, bsz = torch.float32, v.shape[0]
    assert grid == (-(-n // 64), bsz * heads) and qs.dtype == ks.dtype == torch.bfloat16
    h, p = _probs(qs, ks, state, a, b, bias, sbb, sbh, sbn, sbm, heads, n, m, scale_log2, kwargs["BIAS"], bsz)
    ds = p * (go.to(f32) @ v.to(f32).transpose(-1, -2) - delta[..., None])
    sk = ks.to(f32).view(bsz, heads, m, -1)[..., :kwargs["D"]]
    dq.copy_((ds * b.view(bsz, heads, 1, m)) @ sk)


def _grads(call, needs, config=None):
    q, k, v, a, b, bias, spec = call
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    do = torch.randn(q.shape[:3] + (v.shape[-1],)).to(q.dtype)
    args = (do, v, bias, *saved, spec, q.shape[-1], needs)
    with mock.patch.object(backward_launcher, "_launch", _emulate), \
            mock.patch.object(backward_launcher, "_descriptor", lambda tensor, block: tensor), \
            mock.patch.object(backward_launcher, "_row_descriptor", lambda tensor, block_n: tensor):
        got = backward_launcher.launch_hopper_backward(*args, out=out, config=config)
    return got, reference_backward.backward(*args), args


CASES = [
    dict(grad_mode="hamming"),
    dict(grad_mode="hamming", weighting="none"),
    dict(grad_mode="hamming", weighting="token", bias_kind="head"),
    dict(grad_mode="hamming", weighting="token", bias_kind="dense"),
    dict(grad_mode="hamming", bias_kind="table", grid=(3, 3, 1)),
    dict(grad_mode="hamming", weighting="token", bias_kind="mask"),
    dict(grad_mode="stopgrad", weighting="token", bias_kind="dense"),
    dict(grad_mode="stopgrad"),
    dict(),
    dict(weighting="token", bias_kind="head"),
    dict(weighting="none", bias_kind="dense"),
    dict(bias_kind="table", grid=(3, 3, 1), weighting="token"),
]


@pytest.mark.parametrize("staged", [False, True], ids=["global_rows", "staged_rows"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_launcher_assembles_the_reference_gradients(case, staged, helpers):
    call = helpers.make_call(dim_v=24, **case)
    token = case.get("weighting") == "token"
    needs = [True, True, True, token, token, call[5] is not None and call[5].is_floating_point()]
    got, ref, _ = _grads(call, needs, HopperBackwardConfig(staged_rows=True) if staged else None)
    for name, g, r in zip(NAMES, got, ref):
        assert (g is None) == (r is None), name
        if g is None:
            continue
        assert g.shape == r.shape and g.dtype == r.dtype, name
        if name == "dbias" and case.get("bias_kind") == "head":  # sum_j dS_ij cancels to rounding
            assert (g - r).abs().max() <= 1e-5 * ref[2].abs().sum()
            continue
        assert helpers.rel_err(g, r) <= FP32_BOUND, (name, helpers.rel_err(g, r))


@pytest.mark.parametrize("needs", [[False, False, True, False, False, False], [True, False, False, False, False, False],
                                   [False, True, False, False, True, False], [True, True, False, False, False, False]],
                         ids=["dv", "dq", "dk_db", "dq_dk_zeros"])
@pytest.mark.parametrize("grad_mode, dim", [("hamming", 72), ("ste", 64)])
def test_partial_needs_and_the_fake_metadata(needs, grad_mode, dim, helpers):
    call = helpers.make_call(n=33, m=70, dim=dim, dim_v=16, grad_mode=grad_mode, weighting="token")
    got, ref, args = _grads(call, needs)
    do, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, head_dim, _ = args
    shapes = backward_op.wanted_shapes(do, v, bias, a, b, spec, head_dim, needs)
    for name, g, r, shape in zip(NAMES, got, ref, shapes):
        assert (g is None) == (r is None) == (shape is None), name
        if g is not None:
            assert (tuple(g.shape), g.dtype) == shape, name
            layout_of = (lambda t: t.transpose(1, 2)) if name in ("dq", "dk", "dv") else (lambda t: t)
            assert layout_of(g).is_contiguous(), name  # dq, dk, dv in (B, L, H, D) storage (output_layout)
            assert helpers.rel_err(g, r) <= FP32_BOUND, (name, helpers.rel_err(g, r))


def test_launcher_needs_the_forward_output(helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(grad_mode="hamming")
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    with pytest.raises(ValueError, match="needs out"):
        backward_launcher.launch_hopper_backward(out, v, bias, *saved, spec, q.shape[-1], [True] * 6, out=None)


def test_launcher_refuses_shapes_the_kernels_cannot_take(helpers):
    """A caller that skipped the plan gets the plan's reason, not a wrong gradient (ste's sign products need D in
    one power-of-two chunk: D 72 is three)."""
    q, k, v, a, b, bias, spec = helpers.make_call(dim=72, grad_mode="ste")
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    with mock.patch.object(backward_launcher, "_launch", lambda *args: pytest.fail("a kernel was launched")):
        with pytest.raises(ValueError, match="one power-of-two chunk"):
            backward_launcher.launch_hopper_backward(out, v, bias, *saved, spec, 72, [True] * 6, out=out)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16], ids=str)
def test_sign_unpack_matches_the_bits(dtype, helpers):
    q = helpers.make_call(dim=72)[0]
    bits = reference.forward(q, q, q, None, None, None, CallSpec(scale=0.1))[2]  # qbits (B, H, L, 1, W)
    signs = backward_launcher.sign_tiles(bits, 72, dtype)  # (B*H, L, 128)
    want = torch.where(q >= 0, 1.0, -1.0).reshape(-1, q.shape[2], 72)
    assert signs.dtype == dtype and signs.shape == (want.shape[0], q.shape[2], 128)
    assert torch.equal(signs[..., :72].to(torch.float32), want)
    assert not signs[..., 72:].to(torch.float32).any()


def _build_module():
    import importlib.util
    import os
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "hopper_build.py")
    spec = importlib.util.spec_from_file_location("hopper_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_build_check_compiles_every_backward_kind(gluon_ok):
    """CI's offline sm_90 build (``benchmarks/hopper_build.py``) covers each mode, weighting and bias kind, and
    every variant is a call the plan gives the Hopper backward."""
    variants = _build_module().BWD_VARIANTS
    assert {v.grad_mode for v in variants} == {"hamming", "stopgrad", "ste"}
    assert {v.weighting for v in variants} == {"mean_abs", "none", "token"}
    assert {v.bias for v in variants} == {"none", "head", "dense", "mask", "table"}
    assert {v.shape[3] for v in variants} >= {64, 128} and {v.dtype for v in variants} == {torch.bfloat16,
                                                                                          torch.float16}
    for v in variants:
        bsz, heads, n, dim, dim_v = v.shape
        spec = CallSpec(scale=dim ** -0.5, weighting=v.weighting, bias_kind=v.bias, grad_mode=v.grad_mode,
                        grid=(14, 14, 1) if v.bias == "table" else ())
        facts = CallFacts(bsz, heads, n, n, dim, dim_v, v.dtype, bsz * heads * n * dim, False)
        assert hopper_backward_unsupported(facts, spec, SM90) is None, v.name


_CPU_STUB = {"registered": False, "calls": 0}


def _cpu_stub(*flat):
    """A CPU stand-in for ``bitlower::hopper_bwd``'s CUDA kernel: its implementation with the kernel emulated."""
    _CPU_STUB["calls"] += 1
    with mock.patch.object(backward_launcher, "_launch", _emulate), \
            mock.patch.object(backward_launcher, "_descriptor", lambda tensor, block: tensor):
        return backward_op.run_flat(*flat)


def test_the_opaque_op_returns_the_launchers_gradients_and_its_fake_the_metadata(helpers):
    """``hopper_backward`` through ``bitlower::hopper_bwd`` gives ``reference_backward``'s gradients, and the op's
    fake (what Inductor traces) gives its raw outputs' shapes and dtypes. Tracing the stages around the op takes
    CUDA (the interpreter's kernels cannot run on fake tensors): ``test_gpu_hopper_bwd.py``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if not _CPU_STUB["registered"]:
        torch.library.register_kernel("bitlower::hopper_bwd", "cpu", _cpu_stub)
        _CPU_STUB["registered"] = True
    q, k, v, a, b, bias, spec = helpers.make_call(grad_mode="hamming", weighting="mean_abs", bias_kind="dense")
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    do = torch.randn_like(out)
    needs = [True, True, True, True, False, True]
    ref = reference_backward.backward(do, v, bias, *saved, spec, q.shape[-1], needs)
    calls = _CPU_STUB["calls"]
    got = backward_op.hopper_backward(do, v, bias, *saved, spec, q.shape[-1], needs, out=out)
    for name, g, r in zip(NAMES, got, ref):
        assert (g is None) == (r is None), name
        if g is not None:
            assert g.shape == r.shape and g.dtype == r.dtype, name
            assert helpers.rel_err(g, r) <= FP32_BOUND, (name, helpers.rel_err(g, r))
    assert _CPU_STUB["calls"] == calls + 1
    lse, qbits, kbits, _, _, a_s, b_s, row_state = saved
    cfg = backward_launcher.backward_config(lse, v, q.shape[-1], spec)
    operands = backward_launcher.backward_operands(do, v, bias, lse, qbits, kbits, a_s, row_state, spec, q.shape[-1],
                                                   needs, out, cfg)
    flat = (*operands, row_state, a_s, b_s, *spec.op_args(), q.shape[-1], needs, "")
    flat = flat[:1] + (v, bias) + flat[1:]
    real = torch.ops.bitlower.hopper_bwd(*flat)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = torch.ops.bitlower.hopper_bwd(*flat)
    assert [(tuple(r.shape), r.dtype) for r in real] == [(tuple(f.shape), f.dtype) for f in fake]
