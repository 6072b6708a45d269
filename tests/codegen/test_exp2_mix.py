"""The mixed exp2 of the Gluon forward (``codegen.hopper.exp2_mix``): its polynomial, emulated in float32
step by step as the PTX computes it, against float64 ``2**x``; and the PTX's shape (the GPU runs it in
``tests/codegen/test_gpu_hopper.py`` through ``HopperConfig(poly_exp=...)``)."""
from __future__ import annotations

import struct

import pytest
import torch

from bitlower.codegen.hopper.exp2_mix import COEFFICIENTS, exp2_mix_asm


def _f32(hex_literal: str) -> float:
    return struct.unpack(">f", bytes.fromhex(hex_literal[2:]))[0]


def _poly(x: torch.Tensor, clamp: bool) -> torch.Tensor:
    """The PTX sequence on float32 ``x``: each op rounded to float32 (fma in float64, then rounded once)."""
    if clamp:  # max.NaN.f32: NaN stays NaN
        x = torch.where(torch.isnan(x), x, torch.clamp_min(x, -127.0))
    magic = torch.tensor(12582912.0, dtype=torch.float32)
    t = x + magic
    j = t - magic
    f = x - j
    c1, c2, c3, c4 = (_f32(c) for c in COEFFICIENTS)
    p = torch.full_like(f, c4)
    for c in (c3, c2, c1, 1.0):
        p = (p.double() * f.double() + c).float()
    bits = p.view(torch.int32) + (t.view(torch.int32) << 23)
    return bits.view(torch.float32)


def test_polynomial_within_three_micro_relative_over_the_static_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([-100.0 * torch.rand(200_000, generator=gen), 15.0 * torch.rand(20_000, generator=gen),
                   torch.tensor([-0.5, 0.5, 0.0, -100.0, 15.0, -99.5])]).float()
    for clamp in (False, True):
        rel = (_poly(x, clamp).double() / torch.exp2(x.double()) - 1).abs().max().item()
        assert rel <= 3e-6, (clamp, rel)


def test_clamp_gives_exact_zero_below_the_range_and_keeps_nan():
    x = torch.tensor([float("-inf"), -3.4028234663852886e38, -127.0, float("nan")])
    y = _poly(x, clamp=True)
    assert torch.equal(y[:3], torch.zeros(3)) and torch.isnan(y[3])


@pytest.mark.parametrize("every", [4, 8])
@pytest.mark.parametrize("clamp", [False, True])
def test_asm_has_every_minus_one_mufu_and_one_polynomial(every, clamp):
    asm, constraints = exp2_mix_asm(every, clamp)
    assert asm.count("ex2.approx.ftz.f32") == every - 1
    assert asm.count("fma.rn.f32") == 4 and ("max.NaN.f32" in asm) == clamp
    assert constraints.split(",") == ["=f"] * every + ["f"] * every
    assert f"${2 * every - 1}" in asm and f"${2 * every}" not in asm


def test_unsupported_group_size_is_refused():
    with pytest.raises(ValueError, match="every must be one of"):
        exp2_mix_asm(3, False)
