"""The reference's softmax stays a convex combination at any score magnitude (issue 19 item 4).

``exp(s - lse)`` is not normalised once ``lse = m + log(l)`` rounds to the row maximum ``m``;
the reference divides by the row sum instead (``bitlower.reference.softmax_rows``).
"""
import pytest
import torch

import bitlower
from bitlower.reference import softmax_rows
from bitlower.testing import TOLERANCE, assert_close


@pytest.mark.parametrize("scale", [1e6, 1e7, 1e30])
def test_issue_reproducer_ones_sum_to_one_at_huge_scale(scale):
    """Was 1.2131 at scale 1e6 and 2.0 at 1e7 (SDPA: 1.0)."""
    q, k, v = torch.ones(1, 1, 1, 8), torch.ones(1, 1, 2, 8), torch.ones(1, 1, 2, 1)
    out = bitlower.binary_attention(q, k, v, scale=scale)
    assert out.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1.0, 1e6, 1e30])
def test_rows_are_convex_combinations_at_large_magnitude(dtype, magnitude):
    """Random q scaled by 1e30 gave row sums up to 3.0: every output is the mean of ones."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 9, 16, generator=gen, dtype=dtype) * magnitude
    k = torch.randn(2, 3, 11, 16, generator=gen, dtype=dtype)
    v = torch.ones(2, 3, 11, 4, dtype=dtype)
    out = bitlower.binary_attention(q, k, v)
    assert_close("row sums", out, torch.ones_like(out), TOLERANCE[dtype])


def test_large_magnitude_output_and_gradients_match_float64_golden(decomposed_attention):
    """float32 reference against the float64 decomposed formula (plain torch.softmax) at q * 1e6.

    dq and dk pass through ``dS = P (dP - rowsum(P dP))`` of near one-hot rows: 0 in float64 up to
    cancellation, so only their finiteness is checked; dv = Pᵀ dO is well conditioned.
    """
    gen = torch.Generator().manual_seed(1)
    q64 = torch.randn(1, 2, 7, 16, generator=gen, dtype=torch.float64) * 1e6
    k64, v64 = (torch.randn(1, 2, 7, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(1, 2, 7, 16, generator=gen, dtype=torch.float64)
    leaves64 = [x.clone().requires_grad_() for x in (q64, k64, v64)]
    leaves32 = [x.float().requires_grad_() for x in (q64, k64, v64)]
    want = decomposed_attention(*leaves64)
    got = bitlower.binary_attention(*leaves32)
    assert_close("output", got.double(), want, TOLERANCE[torch.float32])
    got_grads = torch.autograd.grad(got, leaves32, grad.float())
    want_grads = torch.autograd.grad(want, leaves64, grad)
    assert all(torch.isfinite(g).all() for g in got_grads)
    assert_close("dv", got_grads[2].double(), want_grads[2], TOLERANCE[torch.float32])


def test_softmax_rows_of_a_row_without_kept_keys_is_zero_with_neg_inf_lse():
    s = torch.tensor([[[[0.0, 1.0], [float("-inf"), float("-inf")]]]])
    probs, lse = softmax_rows(s)
    assert torch.equal(probs[0, 0, 1], torch.zeros(2)) and torch.isneginf(lse[0, 0, 1])
    assert_close("kept row", probs[0, 0, 0], torch.softmax(s[0, 0, 0], -1), 1e-7)


def test_fully_masked_row_is_nan_forward_and_contributes_no_gradient():
    """The row's output is NaN (a softmax over no key); the backward treats it as P = 0."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 16, generator=gen).requires_grad_() for _ in range(3))
    keep = torch.ones(5, 5, dtype=torch.bool)
    keep[3] = False
    out = bitlower.binary_attention(q, k, v, bias=keep)
    assert torch.isnan(out[:, :, 3]).all() and not torch.isnan(out[:, :, [0, 1, 2, 4]]).any()
    rows = [0, 1, 2, 4]
    grads = torch.autograd.grad(out[:, :, rows].sum(), (q, k, v))
    # the same rows with row 3 unmasked: rows do not interact, so the gradients are the same
    want = torch.autograd.grad(bitlower.binary_attention(q, k, v)[:, :, rows].sum(), (q, k, v))
    for name, g, w in zip("qkv", grads, want):
        assert_close(f"d{name}", g, w, TOLERANCE[torch.float32])
