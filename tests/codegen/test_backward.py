"""The fused backward under the Triton interpreter matches bitlower.reference_backward.

Bounds (float32): both sides are float32 with different summation orders; the query kernel's
one-pass ``da = scale (sum p dp h b - delta sum p h b)`` adds a cancellation of at most a few
ulps of the larger sum at these sizes (measured <= 1e-6), so ``1e-5`` relative still fails on any
real error. A head bias gradient is ``sum_j dS_ij = 0`` up to rounding on both sides, so it is
checked against the size of the terms it sums instead.
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from bitlower import reference, reference_backward
from bitlower.codegen import backward

FP32_BOUND = 1e-5
NAMES = ("dq", "dk", "dv", "da", "db", "dbias")

CASES = [
    dict(),
    dict(grad_mode="hamming"),
    dict(grad_mode="stopgrad", weighting="token"),
    dict(weighting="token", bias_kind="table"),
    dict(grad_mode="hamming", weighting="token", bias_kind="table", grid=(3, 3, 0)),
    dict(weighting="none", bias_kind="dense"),
    dict(grad_mode="hamming", bias_kind="dense"),
    dict(bias_kind="mask", weighting="token"),
    dict(pv_quant="int8"),
    dict(pv_quant="int8", grad_mode="hamming", weighting="token"),
]


def _grads(call, needs, dtype=torch.float32, with_out=False):
    """(kernel grads, reference grads); ``with_out`` hands the kernels the forward's output (delta = dO . O)."""
    q, k, v, a, b, bias, spec = call
    out, *saved = reference.forward(q, k, v, a, b, bias, spec)
    do = torch.randn(q.shape[:3] + (v.shape[-1],)).to(dtype)
    args = (do, v, bias, *saved, spec, q.shape[-1], needs)
    return backward(*args, out=out if with_out else None), reference_backward.backward(*args)


def _check(got, ref, rel_err):
    for name, g, r in zip(NAMES, got, ref):
        assert (g is None) == (r is None), name
        if g is not None:
            assert g.shape == r.shape and g.dtype == r.dtype, name
            assert rel_err(g, r) <= FP32_BOUND, (name, rel_err(g, r))


@pytest.mark.parametrize("with_out", [False, True], ids=["delta_pass", "delta_from_out"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()) or "default")
def test_backward_matches_reference(case, with_out, helpers):
    call = helpers.make_call(**case)
    needs = [True, True, True, case.get("weighting") == "token", case.get("weighting") == "token",
             call[5] is not None]
    _check(*_grads(call, needs, with_out=with_out), helpers.rel_err)


@pytest.mark.parametrize("grad_mode, kernels", [("hamming", ["_binary_attn_bwd_k_kernel"]),
                                                ("ste", ["_binary_attn_bwd_q_kernel", "_binary_attn_bwd_k_kernel"])])
def test_given_output_replaces_the_delta_pass(grad_mode, kernels, helpers):
    """mean_abs hamming with the output given: no query kernel; its chain total comes from the key kernel."""
    call = helpers.make_call(n=33, m=17, dim=72, grad_mode=grad_mode)
    launched, real = [], torch.library.wrap_triton

    def spy(kernel):
        launched.append(kernel.__name__)
        return real(kernel)

    with mock.patch("torch.library.wrap_triton", spy):
        got, ref = _grads(call, [True, True, True, False, False, False], with_out=True)
    _check(got, ref, helpers.rel_err)
    assert [name for name in launched if name.startswith("_binary_attn_bwd")] == kernels
    assert "_row_dot_kernel" in launched


@pytest.mark.parametrize("needs", [[True, False, False, False, False, False], [False, False, True, False, False, False],
                                   [False, True, False, False, False, False]], ids=["dq", "dv", "dk"])
@pytest.mark.parametrize("with_out", [False, True], ids=["delta_pass", "delta_from_out"])
def test_partial_needs(needs, with_out, helpers):
    got, ref = _grads(helpers.make_call(n=33, m=17, dim=72), needs, with_out=with_out)
    _check(got, ref, helpers.rel_err)


@pytest.mark.parametrize("with_out", [False, True], ids=["delta_pass", "delta_from_out"])
def test_head_bias_gradient_is_rounding_sized(with_out, helpers):
    call = helpers.make_call(bias_kind="head")
    (got, ref) = _grads(call, [True] * 6, with_out=with_out)
    _check(got[:5], ref[:5], helpers.rel_err)
    dv_scale = ref[2].abs().sum()  # the sum over j of dS cancels to rounding of terms this size
    assert got[5].shape == ref[5].shape and (got[5] - ref[5]).abs().max() <= 1e-5 * dv_scale


def test_bfloat16_gradients(helpers):
    """bf16 inputs: the kernels return dq, dk, dv in bf16 (v's dtype, as SDPA's backward), the reference float32 dq /
    dk and bf16 dv; da, db are float32 on both sides."""
    call = helpers.make_call(dtype=torch.bfloat16, weighting="token")
    got, ref = _grads(call, [True] * 6, torch.bfloat16)
    for name, g, r in zip(NAMES[:5], got, ref):
        rounded = name in ("dq", "dk", "dv")
        assert g.dtype == (torch.bfloat16 if rounded else torch.float32), name
        bound = 2.0**-7 if rounded else FP32_BOUND  # one bf16 rounding of the same value
        assert helpers.rel_err(g, r) <= bound, name
