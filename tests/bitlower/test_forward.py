"""Forward of the operator == the float64 decomposed formula, every variant (SPEC §3)."""
import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import bitlower
from bitlower.spec import BIAS_KINDS, WEIGHTINGS

# float64 against float64: the two differ only in summation order.
TOL64 = 1e-12


def _decomposed_kwargs(case):
    return {key: val for key, val in case.items() if key not in ("q", "k", "v")}


@pytest.mark.parametrize("weighting,bias_kind,pv_quant",
                         list(itertools.product(WEIGHTINGS, BIAS_KINDS, ("none", "int8"))))
def test_forward_matches_decomposed(case_factory, op_runner, decomposed_attention, weighting, bias_kind, pv_quant):
    case = case_factory(weighting, bias_kind)
    got = op_runner(case, pv_quant=pv_quant)
    want = decomposed_attention(case["q"], case["k"], case["v"], pv_quant=pv_quant, **_decomposed_kwargs(case))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("n,m,d,dv", [(1, 1, 8, 8), (5, 11, 72, 16), (13, 4, 256, 80), (9, 9, 33, 7)])
def test_shapes_n_ne_m_and_odd_dims(case_factory, decomposed_attention, n, m, d, dv):
    case = case_factory("mean_abs", "none", n=n, m=m, d=d, dv=dv)
    got = bitlower.binary_attention(case["q"], case["k"], case["v"])
    want = decomposed_attention(case["q"], case["k"], case["v"])
    torch.testing.assert_close(got, want, rtol=TOL64, atol=TOL64)


def test_any_strides_and_storage_offset(decomposed_attention):
    base = torch.randn(2, 9, 3, 3 * 40 + 5, dtype=torch.float64)  # (B, N, H, 3D + pad)
    q = base[..., 5:45].transpose(1, 2)  # (B, H, N, D), non-contiguous, offset 5
    k = base[..., 45:85].transpose(1, 2)
    v = base[..., 85:125].transpose(1, 2)
    assert not q.is_contiguous() and q.storage_offset() == 5
    got = bitlower.binary_attention(q, k, v)
    want = decomposed_attention(q.contiguous(), k.contiguous(), v.contiguous())
    torch.testing.assert_close(got, want, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("dtype,k_ref", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)])
def test_working_dtypes_error_bounded_by_rounding(case_factory, decomposed_attention, dtype, k_ref):
    """err(op at dtype) <= k * err(decomposed at dtype) vs the float64 golden run.

    The op computes in float32 and rounds once to ``dtype``; the decomposed formula at
    ``dtype`` rounds at every step, so its error bounds the op's (k_ref covers ties)."""
    case = case_factory("mean_abs", "dense", seed=3)
    golden = decomposed_attention(case["q"], case["k"], case["v"], bias=case["bias"], bias_kind="dense")
    low = {name: case[name].to(dtype) for name in ("q", "k", "v", "bias")}
    got = bitlower.binary_attention(low["q"], low["k"], low["v"], bias=low["bias"])
    assert got.dtype == dtype
    ref = decomposed_attention(low["q"].double(), low["k"].double(), low["v"].double(), bias=low["bias"].double(),
                               bias_kind="dense").to(dtype)
    err_op = (got.double() - golden).norm() / golden.norm()
    err_ref = (ref.double() - golden).norm() / golden.norm()
    assert err_op <= k_ref * max(err_ref, torch.finfo(dtype).eps)


def test_public_bilinear_uses_generator(case_factory, decomposed_attention):
    q, k, v = (torch.randn(1, 2, 6, 16, dtype=torch.float64) for _ in range(3))
    out1 = bitlower.binary_attention(q, k, v, weighting="bilinear", generator=torch.Generator().manual_seed(7))
    out2 = bitlower.binary_attention(q, k, v, weighting="bilinear", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(7)
    qp, a = bitlower.bilinear_planes(q, gen)
    kp, b = bitlower.bilinear_planes(k, gen)
    want = decomposed_attention(qp, kp, v, a=a, b=b, weighting="bilinear")
    torch.testing.assert_close(out1, want, rtol=TOL64, atol=TOL64)


def test_no_weighting_is_plain_sign_attention():
    q, k, v = (torch.randn(1, 1, 4, 8, dtype=torch.float64) for _ in range(3))
    s = torch.sign(q) @ torch.sign(k).transpose(-1, -2) * 8 ** -0.5
    want = torch.softmax(s, -1) @ v
    torch.testing.assert_close(bitlower.binary_attention(q, k, v, weighting="none"), want)


@pytest.mark.parametrize("weighting", ["mean_abs", "none"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_propagates_like_sdpa(where, weighting):
    """Every output SDPA makes NaN is NaN here too, and NaN stays inside its (batch, head).

    With ``mean_abs`` a NaN in q reaches the whole head: the scalar is a mean over it."""
    q, k, v = (torch.randn(2, 2, 5, 16) for _ in range(3))
    dict(q=q, k=k, v=v)[where][0, 0, 1, 3] = float("nan")
    got = bitlower.binary_attention(q, k, v, weighting=weighting)
    with sdpa_kernel(SDPBackend.MATH):  # SDPA's defining backend; CPU flash drops a NaN in q
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.isnan(want).any()
    assert torch.isnan(got)[torch.isnan(want)].all()
    assert not torch.isnan(got[1]).any() and not torch.isnan(got[0, 1]).any()
    if weighting == "none":
        assert torch.equal(torch.isnan(got), torch.isnan(want))


def test_inf_does_not_crash():
    q, k, v = (torch.randn(1, 2, 5, 16) for _ in range(3))
    q[0, 0, 0, 0] = float("inf")
    out = bitlower.binary_attention(q, k, v)
    assert out.shape == v.shape


def test_output_layout_is_sdpa_flash_layout_eager_and_compiled():
    """(B, H, N, Dv) in (B, N, H, Dv) storage on every path: the heads merge with a view, as after
    SDPA's flash/cuDNN backends; the compiled graph's merged output equals the eager one."""
    q, k, v = (torch.randn(2, 3, 9, 16) for _ in range(3))
    out = bitlower.binary_attention(q, k, v)
    assert out.transpose(1, 2).is_contiguous()

    def merged(q, k, v):
        return bitlower.binary_attention(q, k, v).transpose(1, 2).reshape(2, 9, 48)

    compiled = torch.compile(merged, backend="bitlower", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), merged(q, k, v), rtol=1e-6, atol=1e-6)
    assert merged(q, k, v)._base is not None  # a view of the operator's output, no copy


def test_save_bits_false_keeps_output_and_drops_bits(case_factory, op_runner):
    case = case_factory("mean_abs", "table", dtype=torch.float32)
    d = case["q"].shape[-1]
    args = (case["q"], case["k"], case["v"], None, None, case["bias"], d ** -0.5, "mean_abs", "table",
            list(case["grid"]), "ste", "none", 1.0)
    full = torch.ops.bitlower.binary_attention_fwd(*args, True)
    lean = torch.ops.bitlower.binary_attention_fwd(*args, False)
    torch.testing.assert_close(lean[0], full[0], rtol=0, atol=0)
    assert all(t.shape[-1] == 0 for t in lean[2:6]) and full[2].shape[-1] == 2


def test_no_grad_calls_skip_the_saved_bits_and_backward_refuses_them(case_factory):
    case = case_factory("mean_abs", "none", dtype=torch.float32, requires_grad=True)
    with torch.no_grad():
        out = bitlower.binary_attention(case["q"], case["k"], case["v"])
    assert out.shape[-1] == case["v"].shape[-1]
    args = (case["q"], case["k"], case["v"], None, None, None, 0.1, "mean_abs", "none", [], "ste", "none", 1.0, False)
    out = torch.ops.bitlower.binary_attention_fwd(*args)[0]
    with pytest.raises(RuntimeError, match="save_bits=False"):
        out.sum().backward()
