"""torch.library.opcheck for every variant of the forward and backward operators."""
import itertools

import pytest
import torch

from bitlower import autograd  # noqa: F401  (registers the backward)
from bitlower.spec import BIAS_KINDS, GRAD_MODES, WEIGHTINGS

VARIANTS = (
    [(w, "none", g, "none") for w, g in itertools.product(WEIGHTINGS, GRAD_MODES)]
    + [("mean_abs", b, "ste", "none") for b in BIAS_KINDS if b != "none"]
    + [("token", "table", "hamming", "int8"), ("mean_abs", "dense", "stopgrad", "int8")]
)


# Schema, fake-tensor and autograd-registration checks run for every variant; the AOT
# dispatch check (about 4 s each on 2 cores) for a subset that still covers every weighting,
# bias kind, gradient mode and pv_quant value at least once.
CHEAP_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")
AOT_SUBSET = {0, 4, 8, 11, 12, 13, 14, 15, 16, 17}


def _utils(index):
    return CHEAP_UTILS + (("test_aot_dispatch_dynamic",) if index in AOT_SUBSET else ())


def _fwd_args(case, grad_mode, pv_quant):
    d = case["q"].shape[-1]
    return (case["q"], case["k"], case["v"], case.get("a"), case.get("b"), case.get("bias"), d ** -0.5,
            case["weighting"], case["bias_kind"], list(case.get("grid", ())), grad_mode, pv_quant, 1.0)


@pytest.mark.parametrize("index", range(len(VARIANTS)))
def test_opcheck_forward(case_factory, index):
    weighting, bias_kind, grad_mode, pv_quant = VARIANTS[index]
    case = case_factory(weighting, bias_kind, dtype=torch.float32, requires_grad=True, n=7, m=7, d=40, dv=8)
    torch.library.opcheck(torch.ops.bitlower.binary_attention_fwd.default, _fwd_args(case, grad_mode, pv_quant),
                          test_utils=_utils(index))


def test_aot_subset_covers_every_value():
    covered = [VARIANTS[i] for i in AOT_SUBSET]
    for axis, values in enumerate((WEIGHTINGS, BIAS_KINDS, GRAD_MODES, ("none", "int8"))):
        assert {v[axis] for v in covered} == set(values)


@pytest.mark.parametrize("weighting,bias_kind,grad_mode,pv_quant", VARIANTS[::3])
def test_opcheck_backward(case_factory, weighting, bias_kind, grad_mode, pv_quant):
    case = case_factory(weighting, bias_kind, dtype=torch.float32, n=7, m=7, d=40, dv=8)
    args = _fwd_args(case, grad_mode, pv_quant)
    out, lse, qbits, kbits, qclip, kclip, a, b, row_state = torch.ops.bitlower.binary_attention_fwd(*args)
    needs = [weighting != "bilinear", weighting != "bilinear", True, weighting in ("token", "bilinear"),
             weighting in ("token", "bilinear"), bias_kind not in ("none", "mask")]
    bwd_args = (torch.randn_like(out), case["v"], case.get("bias"), lse, qbits, kbits, qclip, kclip, a, b, row_state,
                *args[6:13], case["q"].shape[-1], needs, out)  # the output, as autograd passes it
    torch.library.opcheck(torch.ops.bitlower.binary_attention_bwd.default, bwd_args)


def test_opcheck_forward_without_saved_bits(case_factory):
    case = case_factory("mean_abs", "mask", dtype=torch.float32, n=7, m=7, d=40, dv=8)
    torch.library.opcheck(torch.ops.bitlower.binary_attention_fwd.default,
                          _fwd_args(case, "ste", "none") + (False,), test_utils=CHEAP_UTILS)
