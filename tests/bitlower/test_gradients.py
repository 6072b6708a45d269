"""Backward of the operator == autograd of the decomposed formula each gradient mode
defines (SPEC §4), in float64; and gradcheck where the function is smooth."""
import itertools

import pytest
import torch

import bitlower
from bitlower.spec import GRAD_MODES

TOL64 = 1e-10  # float64, different summation order through up to 4 matmuls

VARIANTS = [
    ("mean_abs", "none", "none"),
    ("mean_abs", "table", "none"),
    ("mean_abs", "dense", "int8"),
    ("token", "head", "none"),
    ("token", "mask", "int8"),
    ("none", "dense", "none"),
    ("bilinear", "table", "none"),
]


def _grads(out, case, grad_out):
    names = [n for n in ("q", "k", "v", "a", "b", "bias") if n in case and case[n].requires_grad]
    grads = torch.autograd.grad(out, [case[n] for n in names], grad_out, allow_unused=True)
    return dict(zip(names, grads))


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("weighting,bias_kind,pv_quant", VARIANTS)
def test_backward_matches_decomposed_autograd(case_factory, op_runner, decomposed_attention,
                                              grad_mode, weighting, bias_kind, pv_quant):
    case = case_factory(weighting, bias_kind, requires_grad=True, seed=11)
    # Push some |q| above the STE window so the clip is exercised.
    grad_out = torch.randn(case["q"].shape[:3] + (case["v"].shape[-1],), dtype=torch.float64)
    got = _grads(op_runner(case, grad_mode=grad_mode, pv_quant=pv_quant), case, grad_out)
    extra = {k: v for k, v in case.items() if k not in ("q", "k", "v")}
    want_out = decomposed_attention(case["q"], case["k"], case["v"], grad_mode=grad_mode, pv_quant=pv_quant, **extra)
    want = _grads(want_out, case, grad_out)
    assert got.keys() == want.keys()
    for name in got:
        g, w = got[name], want[name]
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        assert g is not None, f"missing gradient for {name}"
        torch.testing.assert_close(g, w, rtol=TOL64, atol=TOL64, msg=lambda m: f"{name}: {m}")


def test_stopgrad_gives_q_and_k_no_gradient(case_factory, op_runner):
    case = case_factory("mean_abs", "none", requires_grad=True)
    out = op_runner(case, grad_mode="stopgrad")
    dq, dk, dv = torch.autograd.grad(out.sum(), [case["q"], case["k"], case["v"]], allow_unused=True)
    assert (dq is None or not dq.any()) and (dk is None or not dk.any()) and dv.abs().sum() > 0


def test_hamming_q_gradient_only_through_mean_abs(case_factory, op_runner):
    """In hamming mode dq is constant over each head's sign pattern: sum_i da_i * sgn(q) / (N D)."""
    case = case_factory("mean_abs", "none", requires_grad=True)
    (dq,) = torch.autograd.grad(op_runner(case, grad_mode="hamming").sum(), [case["q"]])
    per_head = dq * torch.where(case["q"] >= 0, 1.0, -1.0)
    assert torch.allclose(per_head, per_head[:, :, :1, :1].expand_as(per_head))


def test_ste_clip_window(case_factory, op_runner):
    case = case_factory("none", "none", requires_grad=True)
    with torch.no_grad():
        case["q"][0, 0, 0] = 3.0  # outside the window: no gradient
    (dq,) = torch.autograd.grad(op_runner(case, grad_mode="ste", ste_clip=1.0).sum(), [case["q"]])
    assert not dq[0, 0, 0].any()
    assert dq[(case["q"].abs() <= 1.0)].abs().sum() > 0


@pytest.mark.parametrize("bias_kind", ["head", "table", "dense"])
@pytest.mark.parametrize("pv_quant_free_grad_mode", ["hamming", "ste"])
def test_gradcheck_smooth_inputs(case_factory, bias_kind, pv_quant_free_grad_mode):
    """v, the token scalars and the bias enter smoothly: numerical gradients must agree."""
    case = case_factory("token", bias_kind, n=7, m=7, d=16, dv=5, bsz=1, heads=2)
    q, k = case["q"], case["k"]
    grid = case.get("grid")

    def fn(v, a, b, bias):
        return bitlower.binary_attention(q, k, v, a=a, b=b, bias=bias, bias_kind=bias_kind, grid=grid,
                                         weighting="token", grad_mode=pv_quant_free_grad_mode)

    inputs = [case[n].detach().requires_grad_(True) for n in ("v", "a", "b", "bias")]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_bias_table_gradient_is_scatter_add(case_factory, op_runner):
    case = case_factory("none", "table", requires_grad=True)
    out = op_runner(case)
    (dtable,) = torch.autograd.grad(out.sum(), [case["bias"]])
    from bitlower.relpos import relative_position_index

    index = relative_position_index(*case["grid"])
    unused_rows = set(range(dtable.shape[0])) - set(index.flatten().tolist())
    assert all(not dtable[r].any() for r in unused_rows)
    assert dtable.shape == case["bias"].shape


def test_mask_bias_has_no_gradient_and_dense_broadcast_reduces(case_factory, op_runner):
    case = case_factory("mean_abs", "dense", requires_grad=True)
    (dbias,) = torch.autograd.grad(op_runner(case).sum(), [case["bias"]])
    assert dbias.shape == case["bias"].shape == (1, 3, 7, 7)
