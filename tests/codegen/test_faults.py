"""Issue 20 reproducers under the Triton interpreter, at the tile configs the GPU runs them with.

Every masked-on lane of every load and store is checked against the launch's tensors
(``codegen.debug.checked_memory``); outputs and gradients are compared with the reference. The
configs are the GPU table's (``plan_tiles(..., interpreter=False)``) so that the masks and ragged
tiles are those of the failing GPU launches. Inputs are float32: the interpreter's bf16 dot is not
exact (SPEC §9), and the layout and masking logic does not depend on the dtype.
"""
from __future__ import annotations

import pytest
import torch

from bitlower import reference, reference_backward
from bitlower.codegen import backward, forward
from bitlower.codegen.debug import checked_memory
from bitlower.codegen.plan import gpu_tiles
from bitlower.spec import CallSpec

FP32_BOUND = 1e-5
EPS32 = 2.0**-23


def _strided_last(*shape):
    return torch.randn(*shape[:-1], 2 * shape[-1])[..., ::2]  # last-dim stride 2


def _run(q, k, v, bias, spec, variant, needs):
    fwd, bwd = gpu_tiles(q, k, v, bias, spec, variant)
    with checked_memory() as launched:
        got = forward(q, k, v, None, None, bias, spec, variant=variant, config=fwd)
        do = torch.randn(*q.shape[:3], v.shape[-1])
        args = (do, v, bias, *got[1:], spec, q.shape[-1], needs)
        grads = backward(*args, out=got[0], config=bwd)
    ref = reference.forward(q, k, v, None, None, bias, spec)
    return got, ref, grads, reference_backward.backward(*args), launched, do


@pytest.mark.parametrize("variant", ["v1"])  # what the plan runs at D 24 (v2 takes power-of-two D)
def test_dense_bias_d24_dv64_in_bounds(variant, helpers):
    """Reproducer 1 ((3, 1, 256, 256), D 24, Dv 64, mean_abs, dense bias, ste, scale 1): in bounds, exact."""
    q, k, v = torch.randn(3, 1, 256, 24), torch.randn(3, 1, 256, 24), torch.randn(3, 1, 256, 64)
    bias = torch.randn(1, 1, 256, 256)
    spec = CallSpec(scale=1.0, weighting="mean_abs", bias_kind="dense", grad_mode="ste")
    got, ref, grads, ref_grads, launched, _ = _run(q, k, v, bias, spec, variant, [True, True, True, False, False, True])
    assert helpers.rel_err(got[0], ref[0]) <= FP32_BOUND
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None) and (g is None or helpers.rel_err(g, r) <= FP32_BOUND)
    assert "_binary_attn_bwd_k_kernel" in launched


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("dims", [(128, 32), (24, 64), (96, 96)], ids=str)
def test_single_token_in_bounds_and_finite(variant, dims, helpers):
    """Reproducer 2 (N = M = 1, D != Dv): finite output equal to the reference's (which is v itself)."""
    dim, dim_v = dims
    q, k, v = torch.randn(2, 3, 1, dim), torch.randn(2, 3, 1, dim), torch.randn(2, 3, 1, dim_v)
    spec = CallSpec(scale=dim ** -0.5, weighting="mean_abs", grad_mode="hamming")
    got, ref, grads, ref_grads, _, _ = _run(q, k, v, None, spec, variant, [True, True, True, False, False, False])
    assert torch.isfinite(got[0]).all() and helpers.rel_err(got[0], ref[0]) <= FP32_BOUND
    assert helpers.rel_err(grads[2], ref_grads[2]) <= FP32_BOUND


def test_single_key_gradients_are_rounding_of_zero():
    """Reproducer 3 (float32 (1, 1, 1, 1), D = Dv = 96, strided last dim, none, ste, scale 0.05).

    With one key ``p = 1`` and ``dS = p (dp - delta) = 0``: dq and dk are exactly 0 in exact arithmetic
    (the float64 reference gives 0, so a relative error is unbounded). The kernels form ``dp`` by a dot
    and ``delta = dO . O`` by a row dot: their difference is rounding, at most a few float32 ulps of
    ``|dp| + |delta|``, and dq/dk are that times ``scale * a * b`` per channel.
    """
    torch.manual_seed(3)
    q, k, v = (_strided_last(1, 1, 1, 96) for _ in range(3))
    spec = CallSpec(scale=0.05, weighting="none", grad_mode="ste")
    got, ref, grads, ref_grads, _, do = _run(q, k, v, None, spec, "v1", [True, True, True, False, False, False])
    assert torch.equal(ref_grads[0], torch.zeros_like(ref_grads[0]))
    terms = float((do * v).sum().abs() + (do * got[0]).sum().abs())  # |dp| + |delta|
    for g in grads[:2]:
        assert float(g.abs().max()) <= 8 * EPS32 * terms * spec.scale


@pytest.mark.parametrize("min_width", [32, 64])
def test_d24_at_either_padded_width_matches_the_reference(min_width, helpers):
    """Reproducer 1's call with 32- and 64-channel sign tiles (the GPU default pads D 17-32 to 64)."""
    from bitlower.codegen.plan import KernelOptions

    torch.manual_seed(1)
    q, k, v = torch.randn(2, 1, 40, 24), torch.randn(2, 1, 40, 24), torch.randn(2, 1, 40, 64)
    bias = torch.randn(1, 1, 40, 40)
    spec = CallSpec(scale=1.0, weighting="mean_abs", bias_kind="dense", grad_mode="ste")
    options = KernelOptions(forward="v1", min_width=min_width)
    with checked_memory():
        got = forward(q, k, v, None, None, bias, spec, options)
        do = torch.randn(2, 1, 40, 64)
        args = (do, v, bias, *got[1:], spec, 24, [True, True, True, False, False, True])
        grads = backward(*args, options, out=got[0])
    ref = reference.forward(q, k, v, None, None, bias, spec)
    assert helpers.rel_err(got[0], ref[0]) <= FP32_BOUND
    for g, r in zip(grads, reference_backward.backward(*args)):
        assert (g is None) == (r is None) and (g is None or helpers.rel_err(g, r) <= FP32_BOUND)
