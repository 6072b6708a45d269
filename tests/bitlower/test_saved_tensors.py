"""What a binary-attention call keeps for its backward (``bitlower.autograd``): bits, scalars, row state.

Under ``mean_abs`` the effective scalars are saved as one value per (batch, head) and the log-sum-exp is
not saved (the gradients against float64 are ``test_gradients.py``'s, through the same autograd).
"""
from __future__ import annotations

import pytest
import torch

import bitlower


def _saved_shapes(weighting: str, grad_mode: str = "hamming"):
    """Shapes of every tensor the call saves, and the gradients of q, k, v."""
    gen = torch.Generator().manual_seed(0)
    bsz, heads, n, dim = 2, 3, 11, 16
    q, k, v = (torch.randn(bsz, heads, n, dim, generator=gen).requires_grad_() for _ in range(3))
    extra = {}
    if weighting == "token":
        extra = dict(a=torch.rand(bsz, heads, n, generator=gen) + 0.5, b=torch.rand(bsz, heads, n, generator=gen) + 0.5)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = bitlower.binary_attention(q, k, v, weighting=weighting, grad_mode=grad_mode, **extra)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=gen))
    return shapes, grads, (bsz, heads, n)


def test_mean_abs_saves_one_scalar_per_head_and_no_lse():
    shapes, grads, (bsz, heads, n) = _saved_shapes("mean_abs")
    assert (bsz, heads, 1, 1) in shapes  # a_eff, b_eff
    assert (bsz, heads, n, 1) not in shapes  # no per-row copies of them
    assert (bsz, heads, n) not in shapes  # no lse: the backward takes it from the row state
    assert (bsz, heads, n, 2) in shapes  # the row state
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("grad_mode", ["hamming", "ste"])
def test_token_weighting_keeps_its_row_scalars(grad_mode):
    shapes, grads, (bsz, heads, n) = _saved_shapes("token", grad_mode)
    assert shapes.count((bsz, heads, n, 1)) >= 2  # a_i and b_j are per row
    assert (bsz, heads, n) not in shapes
    assert all(torch.isfinite(g).all() for g in grads)
