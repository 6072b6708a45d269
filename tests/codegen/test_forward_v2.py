"""The round-2 forward (``variant="v2"``) and its stats pass under the Triton interpreter match the reference.

Bounds as ``test_forward.py``: float32 inputs, both sides in float32 differing only in summation
order and exp vs exp2, so ``1e-5`` relative (~80 ulps) fails only on a real error; packed bits are
compared exactly and the scalars to ``rtol 1e-6`` (the in-kernel head sums add in another order).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bitlower import reference
from bitlower.codegen import forward
from bitlower.codegen.plan import CallFacts, KernelOptions, auto_forward, forward_plan
from bitlower.codegen.forward_v2 import dense_table, forward_v2
from bitlower.codegen.stats import head_stats
from bitlower.relpos import gather_table_bias
from bitlower.spec import CallSpec

FP32_BOUND = 1e-5
NAMES = ("out", "lse", "qbits", "kbits", "qclip", "kclip", "a", "b", "row_state")

CASES = [
    dict(),
    dict(weighting="token"),
    dict(weighting="none", grad_mode="hamming"),
    dict(bias_kind="head", grad_mode="stopgrad"),
    dict(bias_kind="table", weighting="token"),
    dict(bias_kind="table", grid=(3, 3, 0)),
    dict(bias_kind="dense"),
    dict(bias_kind="mask", weighting="token"),
]


def _check(got, ref, spec, rel_err):
    """Every output against the reference; packed outputs have 0 words unless ``spec.save_bits``."""
    for name, g, r in zip(NAMES, got, ref):
        assert g.dtype == r.dtype, name
        if g.dtype == torch.int32:
            if spec.save_bits:
                assert torch.equal(g, r), name
            else:
                assert g.shape == r.shape[:-1] + (0,), (name, g.shape)
            continue
        assert g.shape == r.shape, name
        if name == "row_state":  # (m2, log2 l): m2 is the static bound on that path, so only the sum is the reference's
            g, r = g.sum(-1), r.sum(-1)
        if name in ("a", "b"):
            torch.testing.assert_close(g, r, rtol=1e-6, atol=0, equal_nan=True, msg=name)
        else:
            assert rel_err(g, r) <= FP32_BOUND, (name, rel_err(g, r))


def _with(spec, **changes):
    return dataclasses.replace(spec, **changes)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()) or "default")
@pytest.mark.parametrize("save_bits", [False, True], ids=["infer", "train"])
def test_v2_matches_reference(case, save_bits, helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(**case)
    spec = _with(spec, save_bits=save_bits)
    got = forward(q, k, v, a, b, bias, spec, variant="v2")
    _check(got, reference.forward(q, k, v, a, b, bias, spec), spec, helpers.rel_err)


@pytest.mark.parametrize("shape", [(2, 2, 19, 23, 40, 24), (1, 2, 33, 17, 72, 80), (2, 1, 5, 40, 96, 32),
                                   (1, 1, 1, 1, 16, 16)], ids=str)
def test_mean_abs_sums_from_the_stats_pass(shape, helpers):
    """The stats pass's sums give the reference's scalars, N = M = 1 and D != Dv included."""
    q, k, v, a, b, bias, spec = helpers.make_call(*shape)
    spec = _with(spec, save_bits=False)
    got = forward_v2(q, k, v, a, b, bias, spec)
    _check(got, reference.forward(q, k, v, a, b, bias, spec), spec, helpers.rel_err)


@pytest.mark.parametrize("grid", [(3, 4, 1), (4, 3, 2), (3, 3, 0)], ids=str)
@pytest.mark.parametrize("table_dense", [True, False], ids=["dense", "gather"])
def test_table_bias_both_forms(grid, table_dense, helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(bias_kind="table", weighting="token", grid=grid)
    spec = _with(spec, save_bits=False)
    got = forward_v2(q, k, v, a, b, bias, spec, table_dense=table_dense)
    _check(got, reference.forward(q, k, v, a, b, bias, spec), spec, helpers.rel_err)


def test_dense_table_is_the_gathered_table(helpers):
    table = torch.randn(7 * 5 + 3, 3).to(torch.bfloat16)[:, [2, 0, 1]]  # non-contiguous columns
    assert torch.equal(dense_table(table, (4, 3, 2), 14), gather_table_bias(table, (4, 3, 2)))


@pytest.mark.parametrize("case", [dict(), dict(weighting="token", bias_kind="table")], ids=["mean_abs", "token-table"])
def test_online_softmax_path(case, helpers):
    """static_max=False runs the running-max loop; a huge scale trips the static guard on its own."""
    q, k, v, a, b, bias, spec = helpers.make_call(**case)
    spec = _with(spec, save_bits=False)
    ref = reference.forward(q, k, v, a, b, bias, spec)
    _check(forward_v2(q, k, v, a, b, bias, spec, static_max=False), ref, spec, helpers.rel_err)
    loud = _with(spec, scale=40.0)  # 2 * bound >> 100: the guard picks the online form
    _check(forward_v2(q, k, v, a, b, bias, loud), reference.forward(q, k, v, a, b, bias, loud), loud, helpers.rel_err)


@pytest.mark.parametrize("weighting", ["mean_abs", "token"])
@pytest.mark.parametrize("where", ["q", "k"])
def test_nan_rows_like_the_reference(weighting, where, helpers):
    """A NaN channel: mean_abs poisons its head, token its query row (q) or every row (k), as the reference."""
    q, k, v, a, b, bias, spec = helpers.make_call(weighting=weighting)
    spec = _with(spec, save_bits=False)
    (q if where == "q" else k)[1, 0, 4, 7] = float("nan")
    got = forward_v2(q, k, v, a, b, bias, spec)
    ref = reference.forward(q, k, v, a, b, bias, spec)
    assert torch.equal(torch.isnan(got[0]), torch.isnan(ref[0])) and torch.isnan(ref[0]).any()
    finite = ~torch.isnan(ref[0])
    assert helpers.rel_err(got[0][finite], ref[0][finite]) <= FP32_BOUND
    for i in (6, 7):
        torch.testing.assert_close(got[i], ref[i], rtol=1e-6, atol=0, equal_nan=True)


def test_bfloat16_inputs_round_like_the_reference(helpers):
    """bf16 in, bf16 out: both round the same float32 result, so at most one bf16 step apart."""
    q, k, v, a, b, bias, spec = helpers.make_call(dtype=torch.bfloat16, bias_kind="mask")
    spec = _with(spec, save_bits=False)
    got = forward_v2(q, k, v, a, b, bias, spec)
    ref = reference.forward(q, k, v, a, b, bias, spec)
    step = ref[0].float().abs() * 2.0**-7 + 1e-30  # >= one bf16 ulp: 7 stored mantissa bits
    assert ((got[0].float() - ref[0].float()).abs() <= step).all()
    assert helpers.rel_err(got[1], ref[1]) <= FP32_BOUND


def test_fully_masked_row_is_nan_like_the_reference(helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(bias_kind="mask")
    bias = bias.clone()
    bias[:, :, 3] = False
    got = forward_v2(q, k, v, a, b, bias, _with(spec, save_bits=False))
    assert torch.isnan(got[0][:, :, 3]).all() and torch.isneginf(got[1][:, :, 3]).all()


def _auto(spec, dim):
    return auto_forward(CallFacts(1, 1, 8, 8, dim, dim, torch.float32, 64, False), spec)


def test_auto_variant_takes_v2_for_a_table_bias(helpers):
    """"auto" runs v2 (0-word bits without save_bits) for a table bias and mean_abs at power-of-two D."""
    q, k, v, a, b, bias, spec = helpers.make_call(bias_kind="table")
    spec = _with(spec, save_bits=False)
    dim = q.shape[-1]
    assert _auto(spec, dim) == "v2"
    assert forward(q, k, v, a, b, bias, spec, variant="auto")[2].shape[-1] == 0
    _check(forward(q, k, v, a, b, bias, spec, variant="auto"), reference.forward(q, k, v, a, b, bias, spec),
           spec, helpers.rel_err)
    assert _auto(_with(spec, pv_quant="int8"), dim) == "v1"
    plain = _with(spec, bias_kind="none")
    assert _auto(plain, 40) == "v1"  # padded to 64: v1 measured faster (DiT D 72)
    assert _auto(_with(plain, weighting="token"), 64) == "v1"  # not measured on v2
    assert _auto(_with(plain, weighting="mean_abs"), 64) == "v2"
    assert _auto(_with(plain, weighting="mean_abs"), 72) == "v1"


def test_forward_option_is_an_argument(helpers):
    """KernelOptions(forward=...) picks the forward per call; pv_quant int8 stays on v1; bad names raise."""
    q, k, v, a, b, bias, spec = helpers.make_call()
    spec = _with(spec, save_bits=False)
    assert forward_plan(q, k, v, bias, spec).kernel == "v1"  # auto at D 40
    assert forward(q, k, v, a, b, bias, spec)[2].shape[-1] == 2  # v1 (word loads): bits regardless (2 words)
    assert forward(q, k, v, a, b, bias, spec, KernelOptions(forward="v2"))[2].shape[-1] == 0
    quant = _with(spec, pv_quant="int8")
    _check(forward(q, k, v, a, b, bias, quant, KernelOptions(forward="v2")),
           reference.forward(q, k, v, a, b, bias, quant), _with(quant, save_bits=True), helpers.rel_err)
    with pytest.raises(ValueError, match="forward must be one of"):
        KernelOptions(forward="v3")
    with pytest.raises(ValueError, match="pv_quant"):
        forward_v2(q, k, v, a, b, bias, quant)


@pytest.mark.parametrize("dim", [16, 40, 72, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_pass_bits_scalars_and_maxima(dim, dtype, helpers):
    x = helpers.strided(torch.randn(2, 3, 21, dim).to(dtype))
    x[0, 1, 3, 5] = float("nan")  # a NaN channel: sign bit 0, NaN scalar on that row
    x[1, 0, 2, :7] = -0.0  # -0.0 counts as >= 0
    x[1, 2, 4, 1] = 0.3  # exactly on a rounded clip threshold
    given = torch.rand(2, 3, 21) + 0.5
    spec = CallSpec(scale=1.0, weighting="token", ste_clip=0.3)
    bits, clip, eff, sums, maxes, signs = head_stats(x, given, spec, eff=True, signs=True)
    expected_signs = torch.where(x.float() >= 0, 1, -1).to(torch.int8)  # NaN -> -1, -0.0 -> +1
    assert torch.equal(signs[..., :dim], expected_signs) and not signs[..., dim:].any()
    xp = reference.with_planes(x, spec)
    assert torch.equal(bits, reference.pack_signs(xp)) and torch.equal(clip, reference.clip_bits(xp, spec))
    ref_eff = reference.effective_scalars(x, given, spec)
    assert torch.allclose(eff, ref_eff, rtol=0, atol=0, equal_nan=True) and sums is None
    assert torch.equal(maxes, ref_eff.nan_to_num(0.0).abs().amax(dim=(2, 3)))
    fp8 = head_stats(x, given, spec, eff=True, signs=True, fp8_signs=True)[5]  # the Hopper kernel's operand
    assert fp8.dtype == torch.float8_e4m3fn
    assert torch.equal(fp8.float()[..., :dim], expected_signs.float()) and not fp8.float()[..., dim:].any()
    bits, clip, eff, sums, maxes, signs = head_stats(x, None, _with(spec, weighting="mean_abs", save_bits=False),
                                                     eff=False)
    assert bits.shape[-1] == 0 and clip.shape[-1] == 0 and eff is None and maxes is None and signs is None
    torch.testing.assert_close(sums, x.float().abs().sum(dim=(2, 3)), rtol=1e-6, atol=0, equal_nan=True)
