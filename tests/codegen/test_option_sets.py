"""The two forward option sets launch one stats kernel and one forward kernel, with the arguments each set reads.

Launches are recorded (``wrap_triton`` replaced), not run: what is checked is the launch list the plan
produces for an sm_90 device, the form ``benchmarks/kernel_identity.py`` and ``hopper_build.py`` compile.
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from bitlower.codegen import forward_kernel
from bitlower.codegen.forward import OPTION_SETS, forward
from bitlower.codegen.plan import CallFacts, DeviceFacts, KernelOptions, plan_forward
from bitlower.codegen.stats import LOAD_TILE, LOAD_WORDS, _stats_kernel
from bitlower.spec import CallSpec

GPU = DeviceFacts(cuda=True, capability=(9, 0))


def _record(variant: str, **spec_kwargs):
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    q, k, v = (torch.empty(2, 3, 64, 64, dtype=torch.bfloat16) for _ in range(3))
    a = b = torch.ones(2, 3, 64) if spec_kwargs.get("weighting") == "token" else None
    spec = CallSpec(scale=0.125, **spec_kwargs)
    plan = plan_forward(CallFacts.of(q, k, v), spec, GPU, KernelOptions(forward=variant))
    with mock.patch("torch.library.wrap_triton", Recorder):
        forward(q, k, v, a, b, None, spec, plan=plan)
    return launches


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("weighting", ["mean_abs", "token"])
def test_one_stats_kernel_and_one_forward_kernel(variant, weighting):
    launches = _record(variant, weighting=weighting)
    assert [kernel for kernel, _, _ in launches] == [_stats_kernel, forward_kernel._binary_attn_fwd_kernel]
    (_, _, stats), (_, args, options) = launches  # q and k in one stats launch (PAIR)
    assert stats["PAIR"]
    opts = OPTION_SETS[variant]
    assert options["SCALARS"] == opts.scalars and options["SIGN_STRIDES"] == opts.sign_strides
    named = dict(zip(forward_kernel._binary_attn_fwd_kernel.arg_names, args))
    given = variant == "v2"
    # the other option set's arguments arrive as None (constexpr), so neither set's signature carries them
    assert (named["bmax_ptr"] is None) is not given and (named["beta_max_ptr"] is None) is not given
    assert all((named[s] is None) is given for s in ("s_qs_bh", "s_qs_n", "s_ks_bh", "s_ks_m"))
    assert (named["vscale_ptr"] is None) is given
    # v1 finalises the mean_abs scalars from eff rows (1 or NaN) and reduces max |b| itself: no head maxima
    assert stats["WRITE_EFF"] == (not given or weighting != "mean_abs")
    assert stats["HEAD_MAX"] == (given and weighting != "mean_abs")
    assert stats["LOAD"] == (LOAD_TILE if given else LOAD_WORDS)  # the measured load forms


def test_v2_refuses_pv_int8_and_the_plan_routes_it_to_v1():
    q, k, v = (torch.empty(1, 1, 64, 64, dtype=torch.bfloat16) for _ in range(3))
    spec = CallSpec(scale=0.125, pv_quant="int8")
    assert plan_forward(CallFacts.of(q, k, v), spec, GPU, KernelOptions(forward="v2")).kernel == "v1"
    plan = plan_forward(CallFacts.of(q, k, v), CallSpec(scale=0.125), GPU, KernelOptions(forward="v2"))
    with pytest.raises(ValueError, match="covers pv_quant 'none' only"):
        forward(q, k, v, None, None, None, spec, plan=plan)
