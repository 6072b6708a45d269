"""Rows that keep no key: finite fills keep eager's uniform average, SDPA gives 0 (issue 19 item 3).

Hugging Face pads with ``masked_fill(m, torch.finfo(dtype).min)``: a query whose keys are all
masked gets equal scores, so eager's softmax is uniform and the row is the mean of v. The operator
gives such a row NaN (a softmax over -inf only; no gradient flows from it), so the rewrite emits
the eager value for it. SDPA's own contract for a row without kept keys is 0 (torch's
``_safe_softmax``, CPU math backend), which the rewrite keeps too; an unfused ``-inf`` fill stays NaN,
as in eager.
"""

import pytest
import torch
import torch.nn.functional as F

import bitlower
from bitlower.backend import bitlower_eager_backend
from bitlower.backend_config import BackendConfig
from bitlower.passes.rewrite_attention import SITES_META_KEY, rewrite_attention
from bitlower.testing import TOLERANCE, assert_close, capture_graph, run_graph

SCALE = 0.35


def qkv(dtype=torch.float32, n=12, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 2, n, 16, generator=gen).to(dtype).requires_grad_(requires_grad) for _ in range(3))


def padding(n=12):
    """``(2, 1, n, n)`` bool, True = masked: query row 3 of batch 0 is masked everywhere, row 5 in part."""
    m = torch.zeros(2, 1, n, n, dtype=torch.bool)
    m[0, 0, 3] = True
    m[1, 0, 5, :4] = True
    return m


def expected(q, k, v, masked):
    """Binary attention with the masked keys dropped, fully masked rows the mean of v."""
    out = bitlower.binary_attention(q, k, v, scale=SCALE, bias=~masked)
    dead = masked.all(-1, keepdim=True)
    return torch.where(dead, v.mean(-2, keepdim=True), out)


FINITE = {
    "masked_fill(m, finfo.min)": lambda q, k, v, m: (q @ k.mT * SCALE).masked_fill(m, torch.finfo(q.dtype).min)
    .softmax(-1) @ v,
    "where(~m, s, finfo.min)": lambda q, k, v, m: torch.where(~m, q @ k.mT * SCALE, torch.finfo(q.dtype).min)
    .softmax(-1) @ v,
    "masked_fill(m, -1e9) then softmax(dtype=float32)": lambda q, k, v, m: F.softmax(
        (q @ k.mT * SCALE).masked_fill(m, -1e9), dim=-1, dtype=torch.float32).to(q.dtype) @ v,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spelling", list(FINITE))
def test_finite_fill_keeps_eager_values_on_fully_masked_rows(spelling, dtype):
    """The issue's reproducer: compiled gave NaN on row 3 where eager is finite."""
    fn = FINITE[spelling]
    if dtype == torch.float16 and "-1e9" in spelling:
        pytest.skip("-1e9 overflows float16 to -inf: an -inf fill, NaN in eager as well")
    q, k, v = qkv(dtype)
    m = padding()
    gm = rewrite_attention(capture_graph(fn, q, k, v, m), BackendConfig())
    assert [r.status for r in gm.meta[SITES_META_KEY]] == ["rewritten"]
    got = run_graph(gm, q=q, k=k, v=v, m=m)
    eager = fn(q, k, v, m)
    assert torch.isfinite(eager).all() and torch.isfinite(got).all()
    assert_close("fully masked row = eager", got[0, :, 3], eager[0, :, 3], TOLERANCE[dtype])
    assert_close("output", got, expected(q, k, v, m), TOLERANCE[dtype])


def test_finite_fill_gradients_are_finite_and_match_the_reference():
    fn = FINITE["masked_fill(m, finfo.min)"]
    q, k, v = qkv(torch.float64, requires_grad=True)
    m = padding()
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=bitlower_eager_backend, fullgraph=True)
    got, want = compiled(q, k, v, m), expected(q, k, v, m)
    assert_close("output", got, want, TOLERANCE[torch.float64])
    cotangent = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for name, g, w in zip("qkv", torch.autograd.grad(got, (q, k, v), cotangent),
                          torch.autograd.grad(want, (q, k, v), cotangent)):
        assert torch.isfinite(g).all(), f"d{name} has NaN"
        assert_close(f"d{name}", g, w, TOLERANCE[torch.float64])


@pytest.mark.parametrize("form", ["bool all False", "float all -inf"])
def test_sdpa_row_without_kept_keys_is_zero_like_eager_sdpa(form):
    """Contract: 0, as torch's SDPA gives (math backend); compiled gave NaN before."""
    q, k, v = qkv()
    keep = ~padding()
    mask = keep if form == "bool all False" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=SCALE)  # noqa: E731
    gm = rewrite_attention(capture_graph(fn, q, k, v, mask), BackendConfig())
    got = run_graph(gm, q=q, k=k, v=v, m=mask)
    eager = fn(q, k, v, mask)
    assert torch.equal(eager[0, :, 3], torch.zeros_like(eager[0, :, 3]))
    assert torch.equal(got[0, :, 3], eager[0, :, 3])
    want = bitlower.binary_attention(q, k, v, scale=SCALE, bias=mask)
    assert_close("kept rows", got[1], want[1], TOLERANCE[torch.float32])


def test_unfused_neg_inf_fill_stays_nan_like_eager():
    q, k, v = qkv()
    m = padding()
    fn = lambda q, k, v, m: (q @ k.mT * SCALE).masked_fill(m, float("-inf")).softmax(-1) @ v  # noqa: E731
    gm = rewrite_attention(capture_graph(fn, q, k, v, m), BackendConfig())
    got, eager = run_graph(gm, q=q, k=k, v=v, m=m), fn(q, k, v, m)
    assert torch.isnan(eager[0, :, 3]).all() and torch.isnan(got[0, :, 3]).all()
    assert torch.equal(torch.isnan(got), torch.isnan(eager))


@pytest.mark.parametrize("fn, reason", [
    (lambda q, k, v, m, b: ((q @ k.mT).masked_fill(m, -1e30) + b).softmax(-1) @ v, "bias_after_finite_fill"),
    (lambda q, k, v, m, b: (q @ k.mT).masked_fill(m, -1e30).masked_fill(b > 1, float("-inf")).softmax(-1) @ v,
     "finite_fill_with_other_masks"),
    (lambda q, k, v, m, b: (q @ k.mT).masked_fill(m, -100.0).softmax(-1) @ v, "masked_fill_value"),
])
def test_finite_fills_the_rewrite_cannot_keep_exact_are_skipped(fn, reason):
    q, k, v = qkv()
    m, b = padding(), torch.randn(12, 12)
    gm = rewrite_attention(capture_graph(fn, q, k, v, m, b), BackendConfig())
    assert [(r.status, r.reason) for r in gm.meta[SITES_META_KEY]] == [("skipped", reason)]
    got, eager = run_graph(gm, q=q, k=k, v=v, m=m, b=b), fn(q, k, v, m, b)
    assert torch.equal(torch.isnan(got), torch.isnan(eager))
    assert_close("left alone", torch.nan_to_num(got), torch.nan_to_num(eager), TOLERANCE[torch.float32])
