"""GPU checks of the fused kernels against a float64 reference (run on the H100: ``pytest -m gpu``).

Error metric ``||x - ref|| / ||ref||`` with ref the float64 reference on the same (rounded) inputs.
Bounds per dtype:
- outputs: ``<= 3 * err(reference computed at the working dtype)``: the reference rounds only its
  output; the kernel also rounds P to the P.V operand type (same size as the output rounding)
  and uses ex2.approx, hence k = 3.
- gradients, bf16/fp16 inputs: the dS.sgn and P.dO dots take bf16 (fp16 for P.dO) operands,
  2**-9 relative rounding per product term; over >= 17 terms of mixed sign the relative error of
  the sums stays near that, so ``1e-2`` (5x margin) fails only on a real error.
- float32 inputs: IEEE float32 dots, ex2.approx (2 ulp): ``1e-5``.
"""
from __future__ import annotations

import pytest
import torch

import bitlower
from bitlower import reference, reference_backward
from bitlower.codegen import forward
from bitlower.codegen.debug import integer_scores
from bitlower.counters import counters

pytestmark = pytest.mark.gpu

SPEC_SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
               (4, 16, 4096, 128), (1, 16, 16384, 64)]
AWKWARD = [(2, 3, 1, 64), (2, 3, 17, 72), (2, 3, 197, 72), (1, 2, 1000, 72), (1, 2, 333, 80), (1, 2, 130, 96),
           (1, 2, 64, 16), (1, 1, 100, 256)]
GRAD_BOUND = {torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float32: 1e-5}


def _poison():
    """Fill freed allocator blocks with NaN, so unwritten kernel outputs show up as NaN."""
    junk = torch.empty(64 * 2**20, device="cuda").fill_(float("nan"))
    del junk


def _slice(x, heads):
    return None if x is None else x[:1, :heads]


@pytest.mark.parametrize("shape", SPEC_SHAPES + AWKWARD, ids=str)
def test_forward_against_float64(shape, helpers):
    dtype = torch.bfloat16
    bsz, heads, n, dim = shape
    q, k, v, a, b, bias, spec = helpers.make_call(bsz, heads, n, n, dim, dim, dtype=dtype, device="cuda")
    _poison()
    out, lse, qbits, kbits, *_ = forward(q, k, v, a, b, bias, spec)
    hs = min(heads, 2)
    qs, ks, vs = (_slice(x, hs) for x in (q, k, v))
    ref64 = reference.forward(qs.double(), ks.double(), vs.double(), None, None, None, spec)
    ref_lp = reference.forward(qs, ks, vs, None, None, None, spec)
    err = helpers.rel_err(out[:1, :hs], ref64[0])
    assert err <= 3 * helpers.rel_err(ref_lp[0], ref64[0]) + 1e-6, err
    assert helpers.rel_err(lse[:1, :hs], ref64[1]) <= 1e-5
    assert torch.equal(qbits[:1, :hs], ref64[2]) and torch.equal(kbits[:1, :hs], ref64[3])
    if n <= 4096:
        h = integer_scores(qbits[:1, :hs], kbits[:1, :hs], dim, from_bits=True)
        assert torch.equal(h.long(), reference.integer_scores(ref64[2], ref64[3], dim, torch.int64)[..., 0, 0])


@pytest.mark.parametrize("save_bits", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("shape", SPEC_SHAPES + AWKWARD, ids=str)
def test_forward_v2_against_float64(shape, save_bits, helpers):
    """The forward's "v2" option set under the same bounds as v1: output, lse, and bits when saved."""
    import dataclasses

    bsz, heads, n, dim = shape
    q, k, v, a, b, bias, spec = helpers.make_call(bsz, heads, n, n, dim, dim, dtype=torch.bfloat16, device="cuda")
    spec = dataclasses.replace(spec, save_bits=save_bits)
    _poison()
    out, lse, qbits, kbits, *_ = forward(q, k, v, a, b, bias, spec, variant="v2")
    hs = min(heads, 2)
    qs, ks, vs = (_slice(x, hs) for x in (q, k, v))
    ref64 = reference.forward(qs.double(), ks.double(), vs.double(), None, None, None, spec)
    ref_lp = reference.forward(qs, ks, vs, None, None, None, spec)
    err = helpers.rel_err(out[:1, :hs], ref64[0])
    assert err <= 3 * helpers.rel_err(ref_lp[0], ref64[0]) + 1e-6, err
    assert helpers.rel_err(lse[:1, :hs], ref64[1]) <= 1e-5
    if save_bits:
        assert torch.equal(qbits[:1, :hs], ref64[2]) and torch.equal(kbits[:1, :hs], ref64[3])
    else:
        assert qbits.shape[-1] == 0 and kbits.shape[-1] == 0


@pytest.mark.parametrize("table_dense", [True, False], ids=["dense", "gather"])
@pytest.mark.parametrize("n_grid", [(197, (14, 14, 1)), (1024, (32, 32, 0))], ids=["197", "1024"])
def test_forward_v2_table_token_against_float64(n_grid, table_dense, helpers):
    import dataclasses

    n, grid = n_grid
    call = helpers.make_call(2, 3, n, n, 64, 64, dtype=torch.bfloat16, device="cuda", weighting="token",
                             bias_kind="table", grid=grid)
    spec = dataclasses.replace(call[-1], save_bits=False)
    _poison()
    out = forward(*call[:6], spec, variant="v2", table_dense=table_dense)[0]
    ref64 = reference.forward(*(t.double() for t in call[:6]), spec)[0]
    ref_lp = reference.forward(*call[:6], spec)[0]
    assert helpers.rel_err(out, ref64) <= 3 * helpers.rel_err(ref_lp, ref64) + 1e-6


MODES = [
    dict(),
    dict(grad_mode="hamming"),
    dict(grad_mode="stopgrad", weighting="token"),
    dict(weighting="token", bias_kind="table", grid=(14, 14, 1)),
    dict(grad_mode="hamming", weighting="token", bias_kind="table", grid=(14, 14, 1)),
    dict(bias_kind="mask"),
    dict(bias_kind="dense", weighting="none"),
    dict(bias_kind="head"),
    dict(pv_quant="int8"),
]


def _op_grads(call, do):
    q, k, v, a, b, bias, spec = call
    leaves = [t for t in (q, k, v, a, b, bias) if t is not None and t.is_floating_point()]
    for t in leaves:
        t.requires_grad_(True)
    out = bitlower.binary_attention(q, k, v, bias=bias, bias_kind=spec.bias_kind, grid=spec.grid or None,
                                    scale=spec.scale, weighting=spec.weighting, a=a, b=b, grad_mode=spec.grad_mode,
                                    pv_quant=spec.pv_quant)
    grads = torch.autograd.grad(out, leaves, do, allow_unused=True)
    return out, dict(zip([id(t) for t in leaves], grads)), leaves


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", MODES, ids=lambda c: "-".join(f"{v}" for v in c.values()) or "default")
def test_forward_backward_against_float64(case, dtype, helpers):
    if dtype != torch.bfloat16 and case not in (MODES[0], MODES[3]):
        pytest.skip("other dtypes on two representative modes (device time)")
    counters.clear()
    call = helpers.make_call(2, 3, 197, 197, 64, 64, dtype=dtype, device="cuda", **case)
    q, k, v, a, b, bias, spec = call
    do = torch.randn(q.shape[:3] + (v.shape[-1],), device="cuda").to(dtype)
    _poison()
    out, grads, leaves = _op_grads(call, do)
    assert not counters["fallback"], dict(counters["fallback"])
    up = lambda t: None if t is None else (t.detach().double() if t.is_floating_point() else t)  # noqa: E731
    ref = reference.forward(*(up(t) for t in call[:6]), spec)
    needs = [True, True, True, a is not None, b is not None, bias is not None and bias.is_floating_point()]
    ref_g = reference_backward.backward(do.double(), up(v), up(bias), *ref[1:], spec, q.shape[-1], needs)
    ref_lp = reference.forward(*call[:6], spec)[0]
    assert helpers.rel_err(out, ref[0]) <= 3 * helpers.rel_err(ref_lp, ref[0]) + 1e-6
    for t, r in zip((q, k, v, a, b, bias), ref_g):
        if t is None or id(t) not in grads:
            continue
        g = grads[id(t)]
        if r is None:
            assert g is None or not g.abs().sum(), "a gradient the mode does not give"
            continue
        r = r.reshape(t.shape)
        if spec.bias_kind == "head" and t is bias:
            assert (g.double() - r).abs().max() <= 1e-3 * ref_g[2].abs().sum()  # sum_j dS = 0 up to rounding
            continue
        assert helpers.rel_err(g, r) <= GRAD_BOUND[dtype], (tuple(t.shape), helpers.rel_err(g, r))


def test_compiled_op_uses_the_kernels(helpers):
    q, k, v, a, b, bias, spec = helpers.make_call(2, 3, 197, 197, 64, 64, dtype=torch.bfloat16, device="cuda",
                                                  grad_mode="hamming")
    counters.clear()
    fn = torch.compile(lambda q, k, v: bitlower.binary_attention(q, k, v, grad_mode="hamming"), fullgraph=True)
    q.requires_grad_(True)
    out = fn(q, k, v)
    (dq,) = torch.autograd.grad(out, (q,), torch.ones_like(out))
    assert not counters["fallback"], dict(counters["fallback"])
    eager = bitlower.binary_attention(q, k, v, grad_mode="hamming")
    (dq_eager,) = torch.autograd.grad(eager, (q,), torch.ones_like(eager))
    assert helpers.rel_err(out, eager) <= 1e-2 and helpers.rel_err(dq, dq_eager) <= 1e-2
