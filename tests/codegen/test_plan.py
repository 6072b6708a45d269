"""The kernel plan is a pure function of its arguments (no module switch, no environment variable)."""
from __future__ import annotations

import pytest
import torch

from bitlower.codegen import configs
from bitlower.codegen.plan import (INTERPRETER_CONFIG, CallFacts, DeviceFacts, ForwardPlan, KernelOptions,
                                   plan_backward, plan_forward)
from bitlower.spec import CallSpec

H100 = DeviceFacts(cuda=True, capability=(9, 0))
A100 = DeviceFacts(cuda=True, capability=(8, 0))


def _call(dim=64, dim_v=None, n=197, dtype=torch.bfloat16):
    return CallFacts(2, 3, n, n, dim, dim_v or dim, dtype, 2 * 3 * n * 256, False)


def _big(dim, dim_v=None):
    """A call above ``plan.HOPPER_AUTO_MIN_WORK``: (16, 8, 4096, 4096)."""
    return CallFacts(16, 8, 4096, 4096, dim, dim_v or dim, torch.bfloat16, 16 * 8 * 4096 * 256, False)


def test_measured_choice_and_overrides():
    spec = CallSpec(scale=0.125)
    assert plan_forward(_call(64), spec, H100).kernel == "v2"  # mean_abs at a power-of-two D
    assert plan_forward(_call(72), spec, H100).kernel == "v1"  # padded D: v1 measured faster (DiT)
    plan = plan_forward(_call(72), spec, H100, KernelOptions(forward="v2", forward_tiles="64x32x4x2"))
    assert plan == ForwardPlan("v2", configs.TileConfig(64, 32, 4, 2), configs.DOT_BF16, True, 128, 128)
    assert plan_forward(_call(64), CallSpec(scale=0.1, pv_quant="int8"), H100, KernelOptions(forward="v2")).kernel == "v1"
    assert plan_backward(_call(64), spec, H100, KernelOptions(backward_tiles="32x64x4x3")).tiles.block_n == 32


def test_padded_widths_floor_at_64_unless_asked_for_32():
    """D 17-32 pads to 64 channels (the 32-wide tiles faulted on the H200); min_width=32 keeps them."""
    spec = CallSpec(scale=0.125)
    for dim, wide, narrow in ((16, 64, 32), (24, 64, 32), (32, 64, 32), (64, 64, 64), (72, 128, 128)):
        fwd, bwd = plan_forward(_call(dim), spec, H100), plan_backward(_call(dim), spec, H100)
        assert (fwd.dim_p, fwd.dim_vp, bwd.dim_p, bwd.dim_vp) == (wide,) * 4
        options = KernelOptions(min_width=32)
        assert plan_forward(_call(dim), spec, H100, options).dim_p == narrow
        assert plan_backward(_call(dim), spec, H100, options).dim_vp == narrow
        assert KernelOptions.decode(options.encode()) == options
    assert plan_forward(_call(32), spec, H100).kernel == "v2"  # the measured choice keys on D, not on DP
    with pytest.raises(ValueError, match="min_width"):
        KernelOptions(min_width=16)


def test_interpreter_tiles_come_from_the_device_not_the_environment(monkeypatch):
    spec, call = CallSpec(scale=0.125), _call(64, dtype=torch.float32)
    cpu = plan_forward(call, spec, DeviceFacts(cuda=False))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert plan_forward(call, spec, DeviceFacts(cuda=False)) == cpu
    assert cpu.tiles == INTERPRETER_CONFIG and cpu.dot == configs.DOT_FP32
    assert plan_forward(call, spec, H100).tiles == configs.FP32_CONFIG
    assert not hasattr(configs, "FORWARD_VARIANT") and not hasattr(configs, "interpreting")


def test_hopper_forward_is_asked_for_and_gated_by_capability(monkeypatch):
    from bitlower.codegen.hopper import support

    spec, hopper = CallSpec(scale=0.125), KernelOptions(forward="hopper")
    monkeypatch.setattr(support, "installed_triton", lambda: "3.6.0")
    monkeypatch.setattr(support, "gluon_unavailable", lambda version=None: None if version == "3.6.0" else "?")
    got = plan_forward(_call(64), spec, H100, hopper)  # its tiles (the tl.dot table's) are not read
    assert (got.kernel, got.dot, got.static_max) == ("hopper", configs.DOT_BF16, True)
    for call in (_big(64), _big(72), _big(128)):  # the default at the measured head dims where it covers the call
        assert plan_forward(call, spec, H100).kernel == "hopper"
    for call in (_call(64), _call(72), _big(128, 64)):  # small work: host-bound; D != Dv: unmeasured
        assert plan_forward(call, spec, H100).kernel in ("v1", "v2")
        assert plan_forward(call, spec, H100, hopper).kernel == "hopper"  # still there when asked for
    assert plan_forward(_call(64, dtype=torch.float32), spec, H100).kernel in ("v1", "v2")
    assert plan_forward(_call(64), CallSpec(scale=0.1, pv_quant="int8"), H100).kernel == "v1"
    assert plan_forward(_call(64), spec, A100).kernel == "v2"
    assert plan_forward(_call(64), spec, A100, hopper) == "the Hopper forward needs compute capability 9.x, got 8.0"
    assert plan_forward(_call(64), spec, DeviceFacts(cuda=False), hopper) == "the Hopper forward needs CUDA tensors"
    assert "multiple of 8" in plan_forward(_call(64, 20), spec, H100, hopper)
    assert "float16/bfloat16" in plan_forward(_call(64, dtype=torch.float32), spec, H100, hopper)
    assert "pv_quant" in plan_forward(_call(64), CallSpec(scale=0.1, pv_quant="int8"), H100, hopper)


def test_hopper_forward_refuses_other_tritons(monkeypatch):
    from bitlower.codegen.hopper import support

    monkeypatch.setattr(support, "installed_triton", lambda: "3.9.0")  # CI's Triton
    reason = plan_forward(_call(64), CallSpec(scale=0.125), H100, KernelOptions(forward="hopper"))
    assert reason == ("the Hopper forward: the Gluon sm_90 kernels are written against Triton 3.6's "
                      "Gluon, found 3.9.0")
    assert plan_forward(_call(64), CallSpec(scale=0.125), H100).kernel == "v2"  # the default falls back to tl.dot


@pytest.mark.parametrize("options", [KernelOptions(), KernelOptions(forward="v1", static_max=False),
                                     KernelOptions(forward_tiles="128x64x8x3", backward_tiles="64x64x4x2")])
def test_options_round_trip_through_the_operator_argument(options):
    assert KernelOptions.decode(options.encode()) == options
    assert KernelOptions().encode() == ""


def test_reasons():
    spec = CallSpec(scale=0.125)
    assert plan_forward(_call(8), spec, H100) == "codegen kernels need D in [16, 256], got 8"
    assert "bilinear" in plan_forward(_call(64), CallSpec(scale=0.1, weighting="bilinear"), H100)
    assert "float64" in plan_forward(_call(64, dtype=torch.float64), spec, H100)
    with pytest.raises(ValueError, match="tile config"):
        KernelOptions(forward_tiles="64x64")
