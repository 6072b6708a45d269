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


def test_measured_choice_and_overrides():
    spec = CallSpec(scale=0.125)
    assert plan_forward(_call(64), spec, H100).kernel == "v2"  # mean_abs at a power-of-two D
    assert plan_forward(_call(72), spec, H100).kernel == "v1"  # padded D: v1 measured faster (DiT)
    plan = plan_forward(_call(72), spec, H100, KernelOptions(forward="v2", forward_tiles="64x32x4x2"))
    assert plan == ForwardPlan("v2", configs.TileConfig(64, 32, 4, 2), configs.DOT_BF16, True)
    assert plan_forward(_call(64), CallSpec(scale=0.1, pv_quant="int8"), H100, KernelOptions(forward="v2")).kernel == "v1"
    assert plan_backward(_call(64), spec, H100, KernelOptions(backward_tiles="32x64x4x3")).tiles.block_n == 32


def test_interpreter_tiles_come_from_the_device_not_the_environment(monkeypatch):
    spec, call = CallSpec(scale=0.125), _call(64, dtype=torch.float32)
    cpu = plan_forward(call, spec, DeviceFacts(cuda=False))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert plan_forward(call, spec, DeviceFacts(cuda=False)) == cpu
    assert cpu.tiles == INTERPRETER_CONFIG and cpu.dot == configs.DOT_FP32
    assert plan_forward(call, spec, H100).tiles == configs.FP32_CONFIG
    assert not hasattr(configs, "FORWARD_VARIANT") and not hasattr(configs, "interpreting")


def test_hopper_forward_is_asked_for_and_gated_by_capability():
    spec = CallSpec(scale=0.125)
    assert plan_forward(_call(64), spec, H100).kernel != "hopper"  # never the default
    reason = plan_forward(_call(64), spec, A100, KernelOptions(forward="hopper"))
    assert isinstance(reason, str) and "9.x" in reason
    got = plan_forward(_call(64), spec, H100, KernelOptions(forward="hopper"))
    assert isinstance(got, str) or got.kernel == "hopper"  # a reason until codegen/hopper accepts the call


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
