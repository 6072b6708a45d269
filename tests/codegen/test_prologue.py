"""The sign/pack prologue and the integer scores match the reference bit for bit (interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from bitlower import reference
from bitlower.codegen.debug import integer_scores
from bitlower.codegen.prologue import sign_pack, unpack_signs
from bitlower.spec import CallSpec


@pytest.mark.parametrize("dim", [16, 40, 72, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bits_scalars_and_signs(dim, dtype, helpers):
    x = helpers.strided(torch.randn(2, 3, 21, dim).to(dtype))
    x[0, 1, 3, 5] = float("nan")  # a NaN channel: sign bit 0, NaN scalar on that row
    x[1, 0, 2, :7] = -0.0  # -0.0 counts as >= 0
    x[1, 2, 4, 1] = 0.3  # exactly on a rounded clip threshold
    spec = CallSpec(scale=1.0, weighting="none", ste_clip=0.3)
    bits, clip, signs, eff, _ = sign_pack(x, None, spec, signs=True)
    xp = reference.with_planes(x, spec)
    assert torch.equal(bits, reference.pack_signs(xp))
    assert torch.equal(clip, reference.clip_bits(xp, spec))
    assert torch.allclose(eff, reference.effective_scalars(x, None, spec), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(eff[0, 1, 3, 0]) and not torch.isnan(eff[0, 1, 4, 0])
    assert torch.equal(signs, unpack_signs(bits, dim))
    assert torch.equal(signs[..., :dim].float(), reference.sgn(x.float()).nan_to_num(-1.0))
    assert (signs[..., dim:] == 0).all()


def test_mean_abs_sums_and_token_seed(helpers):
    x = helpers.strided(torch.randn(2, 2, 33, 72))
    given = torch.rand(2, 2, 33)
    spec = CallSpec(scale=1.0, weighting="mean_abs", grad_mode="hamming")
    _, clip, _, _, sums = sign_pack(x, None, spec, signs=False)
    assert clip.shape[-1] == 0
    torch.testing.assert_close(sums / (33 * 72), x.abs().mean(dim=(2, 3)), rtol=1e-6, atol=0)
    _, _, _, eff, _ = sign_pack(x, given, CallSpec(scale=1.0, weighting="token"), signs=False)
    assert torch.equal(eff[..., 0], given)


@pytest.mark.parametrize("dim", [16, 72, 128])
def test_integer_scores_bit_for_bit(dim, helpers):
    q, k, *_, spec = helpers.make_call(n=37, m=29, dim=dim)
    qb, _, qs, _, _ = sign_pack(q, None, spec, signs=True)
    kb, _, ks, _, _ = sign_pack(k, None, spec, signs=True)
    ref = reference.integer_scores(qb, kb, dim, torch.int64)[..., 0, 0]
    assert torch.equal(integer_scores(qb, kb, dim, from_bits=True).long(), ref)
    assert torch.equal(integer_scores(qs, ks, dim, from_bits=False).long(), ref)
