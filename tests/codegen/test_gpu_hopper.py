"""GPU checks of the Hopper Gluon forward against a float64 reference (H200/H100, ``pytest -m gpu``).

Bounds as ``test_gpu.py``: output error ``<= 3 * err(reference at the working dtype)`` (the kernel
also rounds P to the P.V operand type and uses ex2.approx), or one unit roundoff of the P.V
operand where that is larger (at N = 1 the reference is exact), lse ``<= 1e-5`` relative; with
``HopperConfig(mma_rowsum=True)`` (l sums P rounded to the P.V operand type) lse within one unit
roundoff of that type, absolute (``|log(l~/l)| <= u``).
Outputs are NaN-poisoned before each launch. 50 of 50 passed on the H200 (session 6).
"""
from __future__ import annotations

import pytest
import torch

from bitlower import reference
from bitlower.codegen.hopper import HopperConfig, hopper_tensors_unsupported, launch_hopper_forward
from bitlower.spec import CallSpec

pytestmark = pytest.mark.gpu

SHAPES = [(2, 3, 1, 64, 64), (2, 3, 17, 64, 64), (2, 3, 197, 64, 64), (1, 2, 1000, 64, 64), (2, 2, 197, 128, 128),
          (2, 2, 256, 72, 72), (1, 2, 333, 80, 80), (1, 2, 130, 96, 96), (1, 2, 1000, 128, 64)]
TABLE_GRIDS = {197: (14, 14, 1), 256: (16, 16, 0), 1025: (32, 32, 1), 4097: (64, 64, 1)}  # N -> (Gh, Gw, prefix)
ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}  # unit roundoff (half an ulp of 1)
CONFIGS = [None, HopperConfig(128, 64, 2), HopperConfig(64, 64, 3), HopperConfig(poly_exp=8),
           HopperConfig(poly_exp=4), HopperConfig(mma_rowsum=True), HopperConfig(128, 64, 2, mma_rowsum=True),
           HopperConfig(consumers=1), HopperConfig(consumers=2), HopperConfig(consumers=3),
           HopperConfig(64, 64, 4, consumers=2), HopperConfig(64, 64, 3, consumers=3),
           HopperConfig(64, 64, 3, consumers=3, pingpong=False), HopperConfig(64, 64, 3, mma_rowsum=True, consumers=3),
           HopperConfig(64, 128, 2, consumers=2), HopperConfig(64, 64, 3, 0, 4, True, 3, False),
           HopperConfig(64, 64, 3, 0, 8, True, 3, False), HopperConfig(64, 32, 2), HopperConfig(64, 32, 3)]
PINGPONG = [HopperConfig(consumers=2), HopperConfig(consumers=3)]


def _poison():
    """Fill freed allocator blocks with NaN, so unwritten kernel outputs show up as NaN."""
    junk = torch.empty(64 * 2**20, device="cuda").fill_(float("nan"))
    del junk


def _call(shape, dtype, weighting, bias_kind):
    """Random operands: q, k of any strides, v permuted from (B, N, H, Dv) storage (TMA-aligned)."""
    bsz, heads, n, dim, dim_v = shape
    q = torch.randn(bsz, n, heads, dim, device="cuda").to(dtype).transpose(1, 2)
    k = torch.randn(bsz, heads, dim, n, device="cuda").to(dtype).transpose(-1, -2)
    v = torch.randn(bsz, n, heads, dim_v, device="cuda").to(dtype).transpose(1, 2)
    a = b = bias = None
    grid = ()
    if weighting == "token":
        a = torch.rand(bsz, heads, n, device="cuda") + 0.5
        b = torch.rand(bsz, heads, n, device="cuda") + 0.5
    if bias_kind == "head":
        bias = torch.randn(heads, device="cuda").to(dtype)
    elif bias_kind == "dense":
        bias = torch.randn(1, heads, n, n, device="cuda").to(dtype)
    elif bias_kind == "mask":
        bias = torch.rand(bsz, 1, n, n, device="cuda") > 0.3
        bias[..., 0] = True  # no fully masked row (the reference gives NaN there, as the kernel)
    elif bias_kind == "table":
        from bitlower.relpos import table_rows
        grid = TABLE_GRIDS[n]
        bias = (0.5 * torch.randn(table_rows(*grid[:2]), heads, device="cuda")).to(dtype)
    spec = CallSpec(scale=dim ** -0.5, weighting=weighting, bias_kind=bias_kind, grid=grid, save_bits=True)
    return q, k, v, a, b, bias, spec


def _rel(x, ref):
    x, ref = x.double(), ref.double()
    return float("inf") if torch.isnan(x).any() else float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def _check(call, config=None, static_max=True):
    q, k, v, a, b, bias, spec = call
    reason = hopper_tensors_unsupported(q, k, v, a, b, bias, spec)
    if reason:
        pytest.skip(reason)
    _poison()
    out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, _ = launch_hopper_forward(
        q, k, v, a, b, bias, spec, config=config, static_max=static_max)
    torch.cuda.synchronize()
    up = lambda t: t if t is None or not t.is_floating_point() else t.double()  # noqa: E731 - masks stay bool
    ref64 = reference.forward(q.double(), k.double(), v.double(), up(a), up(b), up(bias), spec)
    ref_lp = reference.forward(q, k, v, a, b, bias, spec)
    err = _rel(out, ref64[0])
    # 3x the working-dtype reference's error, or one unit roundoff of the P.V operand where that is
    # larger: at M = 1 the reference returns v exactly (error 0); the kernel rounds p = exp2(s2 - m) to it
    assert err <= max(3 * _rel(ref_lp[0], ref64[0]), ROUNDOFF[v.dtype]), err
    if config is not None and config.mma_rowsum:
        assert not torch.isnan(lse).any() and (lse.double() - ref64[1]).abs().max().item() <= ROUNDOFF[v.dtype]
    else:
        assert _rel(lse, ref64[1]) <= 1e-5
    assert torch.equal(qbits, ref64[2]) and torch.equal(kbits, ref64[3])
    assert torch.equal(qclip, ref64[4]) and torch.equal(kclip, ref64[5])
    # float32 sums of N*D terms (tile tree + one atomic add per 64 rows): ~30 roundings of 2**-24 at most
    assert _rel(a_eff, ref64[6]) <= 1e-5 and _rel(b_eff, ref64[7]) <= 1e-5


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("weighting", ["mean_abs", "none", "token"])
def test_weightings_against_float64(shape, weighting):
    _check(_call(shape, torch.bfloat16, weighting, "none"))


@pytest.mark.parametrize("bias_kind", ["head", "dense", "mask"])
@pytest.mark.parametrize("shape", [(2, 3, 17, 64, 64), (1, 2, 1000, 64, 64), (2, 2, 197, 128, 128)], ids=str)
def test_biases_against_float64(shape, bias_kind):
    _check(_call(shape, torch.bfloat16, "mean_abs", bias_kind))


@pytest.mark.parametrize("dim", [64, 72, 128])
def test_table_bias_and_token_weighting(dim):
    _check(_call((2, 3, 197, dim, dim), torch.bfloat16, "token", "table"))


@pytest.mark.parametrize("n", [256, 1025, 4097])
@pytest.mark.parametrize("config", [None, HopperConfig(64, 64, 3, consumers=3, pingpong=False)], ids=str)
def test_table_bias_gathered_in_the_kernel(n, config):
    """The table gathered per score (``launcher.table_rows_operand``): grids with and without a prefix token."""
    _check(_call((1, 2, n, 64, 64), torch.bfloat16, "mean_abs", "table"), config)


@pytest.mark.parametrize("shape", [(2, 3, 197, 64, 64), (1, 2, 1000, 128, 128), (2, 2, 256, 72, 72)], ids=str)
def test_float16(shape):
    _check(_call(shape, torch.float16, "mean_abs", "none"))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("static_max", [True, False])
def test_configs_and_the_online_path(config, static_max):
    _check(_call((1, 2, 1000, 64, 64), torch.bfloat16, "mean_abs", "dense"), config, static_max)


@pytest.mark.parametrize("shape", [(2, 3, 1, 64, 64), (2, 3, 17, 64, 64), (2, 3, 197, 64, 64), (1, 2, 1000, 64, 64),
                                   (2, 2, 197, 128, 128), (2, 2, 256, 72, 72)], ids=str)
@pytest.mark.parametrize("case", [("mean_abs", "none", torch.bfloat16), ("token", "mask", torch.bfloat16),
                                  ("mean_abs", "none", torch.float16)], ids=str)
def test_row_sums_on_the_tensor_cores(shape, case):
    weighting, bias_kind, dtype = case
    _check(_call(shape, dtype, weighting, bias_kind), HopperConfig(mma_rowsum=True))


@pytest.mark.parametrize("config", [None, HopperConfig(128, 64, 2), HopperConfig(peel=True), HopperConfig(64, 64, 3),
                                    HopperConfig(mma_rowsum=True), HopperConfig(maxnreg=128)], ids=str)
@pytest.mark.parametrize("shape", [(2, 2, 256, 72, 72), (2, 3, 197, 72, 72), (1, 2, 333, 64, 80), (1, 3, 130, 96, 96)],
                         ids=str)
@pytest.mark.parametrize("static_max", [True, False])
def test_value_tail(config, shape, static_max):
    """Dv in (64, 96]: the P.V as 64 channels and a tail of 16 / 32 (``config.value_split``), both maxima;
    the tail's channels are checked on their own too (a whole-output error would dilute them)."""
    call = _call(shape, torch.bfloat16, "token", "mask")
    _check(call, config, static_max)
    q, k, v, a, b, bias, spec = call
    out = launch_hopper_forward(q, k, v, a, b, bias, spec, config=config, static_max=static_max)[0]
    ref64 = reference.forward(q.double(), k.double(), v.double(), a.double(), b.double(), bias, spec)[0]
    ref_lp = reference.forward(q, k, v, a, b, bias, spec)[0]
    tail = slice(64, None)
    err = _rel(out[..., tail], ref64[..., tail])
    assert err <= max(3 * _rel(ref_lp[..., tail], ref64[..., tail]), ROUNDOFF[v.dtype]), err


@pytest.mark.parametrize("config", PINGPONG, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", [("mean_abs", "none", torch.bfloat16), ("token", "mask", torch.bfloat16),
                                  ("none", "head", torch.float16)], ids=str)
def test_pingpong_consumers(config, shape, case):
    """Structure (b): rows split over 2 or 3 consumer warpgroups, tiles shared; every shape and a bias each."""
    weighting, bias_kind, dtype = case
    _check(_call(shape, dtype, weighting, bias_kind), config)


@pytest.mark.parametrize("config", [None] + PINGPONG, ids=str)
def test_loose_bound_takes_the_running_maximum(config):
    q, k, v, a, b, bias, spec = _call((2, 2, 333, 64, 64), torch.bfloat16, "token", "none")
    a = a * 40.0  # |c_i| max|b| D far above the static limit: the in-kernel guard must switch
    _check((q, k, v, a, b, bias, spec), config)


@pytest.mark.parametrize("config", [None] + PINGPONG, ids=str)
def test_integer_scores_bit_for_bit(config):
    """V = identity makes O = P; log P differences give h_ij - h_i0 exactly (steps of 2 * scale)."""
    n = dim = 64
    q = torch.randn(1, 2, n, dim, device="cuda").to(torch.bfloat16)
    k = torch.randn(1, 2, n, dim, device="cuda").to(torch.bfloat16)
    v = torch.eye(n, device="cuda").to(torch.bfloat16).expand(1, 2, n, n).contiguous()
    spec = CallSpec(scale=0.05, weighting="none", save_bits=True)
    reason = hopper_tensors_unsupported(q, k, v, None, None, None, spec)
    if reason:
        pytest.skip(reason)
    out, _, qbits, kbits, *_ = launch_hopper_forward(q, k, v, None, None, None, spec, config=config)
    h = reference.integer_scores(qbits, kbits, dim, torch.int64)[..., 0, 0]  # (B, H, N, M)
    logp = out.double().log()
    diff = torch.round((logp - logp[..., :1]) / spec.scale).long()
    assert torch.equal(diff, h - h[..., :1])


def test_direct_launch_relaunches_the_compiled_kernel(monkeypatch):
    """``direct_launch`` enabled: a launch key's first call goes through the JIT, the later ones relaunch the cached
    kernel; every call checked against float64, over three shapes (N 197 / 256 / 1000: integer arguments on both
    sides of Triton's divisibility-by-16 specialization)."""
    from bitlower.codegen import direct_launch

    direct = []
    launch = direct_launch.DirectLauncher.launch
    monkeypatch.setattr(direct_launch, "ENABLED", True)
    monkeypatch.setattr(direct_launch.DirectLauncher, "launch",
                        staticmethod(lambda *a: (direct.append(1), launch(*a))))
    calls = [_call((2, 3, 197, 64, 64), torch.bfloat16, "token", "dense"),
             _call((1, 2, 256, 72, 72), torch.bfloat16, "mean_abs", "none"),
             _call((1, 2, 1000, 64, 64), torch.bfloat16, "none", "mask")]
    for _ in range(3):
        for call in calls:
            _check(call)
    assert len(direct) >= 2 * len(calls)
