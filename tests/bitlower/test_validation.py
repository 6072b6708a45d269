"""Bad input raises an error naming the argument and the constraint."""
import pytest
import torch

import bitlower
from bitlower.relpos import table_rows


def qkv(b=2, h=3, n=5, m=6, d=16, dv=8, dtype=torch.float32):
    return torch.randn(b, h, n, d, dtype=dtype), torch.randn(b, h, m, d, dtype=dtype), torch.randn(b, h, m, dv, dtype=dtype)


@pytest.mark.parametrize("mutate,error,words", [
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have 4 dims"),
    (lambda q, k, v: (q, k[:1], v), ValueError, "batch and heads"),
    (lambda q, k, v: (q, k, v[:, :, :2]), ValueError, "same length M"),
    (lambda q, k, v: (q, k[..., :8], v), ValueError, "same head dim D"),
    (lambda q, k, v: (q.long(), k, v), TypeError, "q must be a floating tensor"),
    (lambda q, k, v: (q, k.double(), v), TypeError, "share one dtype"),
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a torch.Tensor"),
    (lambda q, k, v: (q[..., :4], k[..., :4], v), ValueError, "head dim D of q and k must be in [8, 256]"),
    (lambda q, k, v: (torch.randn(2, 3, 5, 257), torch.randn(2, 3, 6, 257), v), ValueError, "[8, 256]"),
    (lambda q, k, v: (q, k, v.to("meta")), ValueError, "one device"),
])
def test_qkv_errors(mutate, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        bitlower.binary_attention(*mutate(*qkv()))


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(bias=torch.randn(4), bias_kind="head"), ValueError, r"kind 'head' must have shape \(H,\)"),
    (dict(bias=torch.randn(2, 3, 5, 7)), ValueError, "must broadcast to"),
    (dict(bias=torch.randn(4, 3, 5, 6)), ValueError, "must broadcast to"),
    (dict(bias=torch.ones(5, 6, dtype=torch.int32)), TypeError, "bias must be a floating tensor"),
    (dict(bias=torch.ones(5, 6), bias_kind="mask"), TypeError, "must be torch.bool"),
    (dict(bias=torch.ones(5, 6), bias_kind="fancy"), ValueError, "bias_kind must be one of"),
    (dict(bias=torch.ones(1, 1, 1, 1, 5, 6)), ValueError, "must not grow"),
    (dict(bias=torch.randn(table_rows(2, 2), 3), bias_kind="table"), ValueError, "grid must be"),
    (dict(bias=torch.randn(table_rows(2, 2), 3), bias_kind="table", grid=(2, 2, 1)), ValueError, "N == M"),
    (dict(weighting="tokens"), ValueError, "weighting must be one of"),
    (dict(grad_mode="sign"), ValueError, "grad_mode must be one of"),
    (dict(pv_quant="fp8"), ValueError, "pv_quant must be one of"),
    (dict(ste_clip=0), ValueError, "ste_clip must be a positive"),
    (dict(scale=float("nan")), ValueError, "scale must be finite"),
    (dict(scale=torch.tensor(0.1)), TypeError, "scale must be a Python number"),
    (dict(weighting="token"), ValueError, "a is required"),
    (dict(weighting="token", a=torch.ones(2, 3, 5), b=torch.ones(2, 3, 5)), ValueError, r"b must have shape \(2, 3, 6\)"),
    (dict(a=torch.ones(2, 3, 5)), ValueError, "only taken with weighting 'token'"),
])
def test_option_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        bitlower.binary_attention(*qkv(), **kwargs)


def test_config_validates():
    with pytest.raises(ValueError, match="grad_mode must be one of"):
        bitlower.AttentionConfig(grad_mode="straight")
    cfg = bitlower.AttentionConfig(weighting="none", grad_mode="hamming")
    q, k, v = qkv()
    assert bitlower.binary_attention(q, k, v, **cfg.as_kwargs()).shape == (2, 3, 5, 8)


def test_fully_masked_row_is_nan_not_crash():
    q, k, v = qkv()
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[2] = False
    out = bitlower.binary_attention(q, k, v, bias=mask)
    assert torch.isnan(out[:, :, 2]).all() and not torch.isnan(out[:, :, :2]).any()



@pytest.mark.parametrize("fullgraph, error", [(False, ValueError), (True, torch._dynamo.exc.Unsupported)])
@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_bad_scale_is_rejected_under_a_dynamic_compile(scale, fullgraph, error):
    """A float input is a ``SymFloat`` under ``dynamic=True``; its check still names it. With
    ``fullgraph=True`` Dynamo reports the ValueError it met (an "Observed exception")."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, s: bitlower.binary_attention(q, k, v, scale=s), backend="eager",
                             fullgraph=fullgraph, dynamic=True)
    q, k, v = qkv()
    compiled(q, k, v, 0.25)
    with pytest.raises(error, match="scale must be finite"):
        compiled(q, k, v, scale)


@pytest.mark.parametrize("kwargs,error,words", [
    # issue 19 item 8: the op schema's "Expected a value of type 'List[int]'" before the fix
    (dict(grid=(2.0, 2, 1)), TypeError, r"grid must be \(Gh, Gw, prefix_tokens\) of ints, got \(2.0, 2, 1\)"),
    # was "'<' not supported between instances of 'str' and 'int'"
    (dict(grid="221"), TypeError, "grid must be a tuple .* got str '221'"),
    (dict(grid=(2, 2)), ValueError, "three ints, got 2 entries"),
    (dict(grid=(2, True, 1)), TypeError, "of ints"),
    (dict(grid=(0, 2, 1)), ValueError, "Gh, Gw >= 1 and prefix_tokens >= 0"),
    (dict(scale="0.5"), TypeError, "scale must be a real number .* got str '0.5'"),  # was silently accepted
    (dict(scale=1j), TypeError, r"scale must be a real number .* got complex 1j"),  # was a bare float() error
    (dict(scale=True), TypeError, "scale must be a real number"),
])
def test_operator_argument_types_are_named(kwargs, error, words):
    q, k, v = qkv(n=5, m=5)
    table = torch.randn(table_rows(2, 2), 3)
    with pytest.raises(error, match=words):
        bitlower.binary_attention(q, k, v, bias=table, bias_kind="table", **kwargs)


@pytest.mark.parametrize("scale", [0.5, 2, __import__("numpy").float64(0.25)])
def test_real_scales_and_integral_grids_are_accepted(scale):
    q, k, v = qkv(n=5, m=5)
    grid = (2, __import__("numpy").int64(2), 1)
    out = bitlower.binary_attention(q, k, v, bias=torch.randn(table_rows(2, 2), 3), bias_kind="table", grid=grid,
                                    scale=scale)
    assert torch.isfinite(out).all()


def test_symfloat_scale_compiles_without_graph_break():
    """``q.shape[-1] ** -0.5`` under ``dynamic=True`` is a SymFloat: accepted, traced, no graph break."""
    torch._dynamo.reset()
    fn = lambda q, k, v: bitlower.binary_attention(q, k, v, scale=q.shape[-1] ** -0.5)  # noqa: E731
    compiled = torch.compile(fn, backend="eager", fullgraph=True, dynamic=True)
    for n in (5, 7):
        q, k, v = qkv(n=n, m=n)
        torch.testing.assert_close(compiled(q, k, v), fn(q, k, v))
