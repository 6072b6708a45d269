"""The fused forward under the Triton interpreter matches bitlower.reference.

Bounds (float32 inputs): both sides compute in float32 and differ only in summation order and
exp vs exp2; over M <= 64 keys that is a few ulps, so ``1e-5`` relative (~80 ulps) can only
fail on a real error. Packed bits and scalars are compared exactly.
"""
from __future__ import annotations

import pytest
import torch

from bitlower import reference
from bitlower.codegen import forward, unsupported_reason
from bitlower.spec import CallSpec

FP32_BOUND = 1e-5

CASES = [
    dict(),
    dict(weighting="token"),
    dict(weighting="none", grad_mode="hamming"),
    dict(bias_kind="head", grad_mode="stopgrad"),
    dict(bias_kind="table", weighting="token"),
    dict(bias_kind="table", grid=(3, 3, 0)),
    dict(bias_kind="dense"),
    dict(bias_kind="mask", weighting="token"),
    dict(pv_quant="int8"),
    dict(pv_quant="int8", bias_kind="mask"),
]


def _check(got, ref, rel_err):
    names = ("out", "lse", "qbits", "kbits", "qclip", "kclip", "a", "b", "row_state")
    assert len(got) == len(ref) == len(names)
    for name, g, r in zip(names, got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        if name == "row_state":  # (m2, log2 l): m2 is the static bound on that path, so only the sum is the reference's
            g, r = g.sum(-1), r.sum(-1)
        if g.dtype == torch.int32:
            assert torch.equal(g, r), name
        elif name in ("a", "b"):
            torch.testing.assert_close(g, r, rtol=1e-6, atol=0, msg=name)
        else:
            assert rel_err(g, r) <= FP32_BOUND, (name, rel_err(g, r))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()) or "default")
def test_forward_matches_reference(case, helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(**case)
    got = forward(q, k, v, a, b, bias, spec)
    _check(got, reference.forward(q, k, v, a, b, bias, spec), helpers.rel_err)


def test_output_has_sdpa_layout(helpers):
    """out is (B, H, N, Dv) in (B, N, H, Dv) storage (transpose(1, 2) is contiguous, as SDPA's flash/cuDNN
    outputs, so timm's ``transpose(1, 2).reshape(B, N, C)`` is a view), every element the reference's."""
    q, k, v, a, b, bias, spec = helpers.make_call(bsz=2, heads=3)
    out = forward(q, k, v, a, b, bias, spec)[0]
    assert out.transpose(1, 2).is_contiguous() and out.stride()[1:] != out.contiguous().stride()[1:]
    assert helpers.rel_err(out, reference.forward(q, k, v, a, b, bias, spec)[0]) <= FP32_BOUND


@pytest.mark.parametrize("case", [dict(), dict(weighting="token", bias_kind="table")], ids=["mean_abs", "token-table"])
def test_online_softmax_path(case, helpers):
    """static_max=False runs the running-max loop; a huge scale trips the static guard on its own."""
    q, k, v, a, b, bias, spec = helpers.make_call(**case)
    ref = reference.forward(q, k, v, a, b, bias, spec)
    _check(forward(q, k, v, a, b, bias, spec, static_max=False), ref, helpers.rel_err)
    loud = CallSpec(**{**spec.__dict__, "scale": 40.0})  # 2 * bound >> 100: guard picks online
    _check(forward(q, k, v, a, b, bias, loud), reference.forward(q, k, v, a, b, bias, loud), helpers.rel_err)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 16, 16), (1, 2, 33, 17, 72, 80), (2, 1, 5, 40, 96, 32)])
def test_awkward_shapes(shape, helpers):
    bsz, heads, n, m, dim, dim_v = shape
    q, k, v, a, b, bias, spec = helpers.make_call(bsz, heads, n, m, dim, dim_v)
    _check(forward(q, k, v, a, b, bias, spec), reference.forward(q, k, v, a, b, bias, spec), helpers.rel_err)


def test_bfloat16_inputs_round_like_the_reference(helpers):
    """bf16 in, bf16 out: both round the same float32 result, so at most one bf16 step apart."""
    q, k, v, a, b, bias, spec = helpers.make_call(dtype=torch.bfloat16, bias_kind="mask")
    got = forward(q, k, v, a, b, bias, spec)
    ref = reference.forward(q, k, v, a, b, bias, spec)
    step = ref[0].float().abs() * 2.0**-7 + 1e-30  # >= one bf16 ulp: 7 stored mantissa bits, ulp(x) <= |x| 2**-7
    assert ((got[0].float() - ref[0].float()).abs() <= step).all()
    assert helpers.rel_err(got[1], ref[1]) <= FP32_BOUND


def test_fully_masked_row_is_nan_like_the_reference(helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(bias_kind="mask")
    bias = bias.clone()
    bias[:, :, 3] = False
    got = forward(q, k, v, a, b, bias, spec)
    ref = reference.forward(q, k, v, a, b, bias, spec)
    assert torch.isnan(got[0][:, :, 3]).all() and torch.isnan(ref[0][:, :, 3]).all()
    assert torch.isneginf(got[1][:, :, 3]).all()


def test_unsupported_calls_have_reasons(helpers):
    q, k, v, a, b, bias, spec = helpers.make_call()
    assert "CUDA" in unsupported_reason(q, k, v, a, b, bias, spec)
    bilinear = CallSpec(scale=1.0, weighting="bilinear")
    assert unsupported_reason(q.to("meta"), k.to("meta"), v.to("meta"), None, None, None, bilinear) is not None
