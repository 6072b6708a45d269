"""The stats pass's signs and bits, the backward's unpack and the integer scores, bit for bit (interpreter on CPU).

``test_forward_v2.test_stats_pass_bits_scalars_and_maxima`` checks the stats pass's bits, clip bits,
scalars and maxima against the reference; here: the unpack inverts the packing, the per-head sums and
the token seed, the ``head_max`` switch, and the integer scores from both sign forms.
"""
from __future__ import annotations

import pytest
import torch

from bitlower import reference
from bitlower.codegen.backward import unpack_signs
from bitlower.codegen.debug import integer_scores
from bitlower.codegen.stats import head_stats
from bitlower.spec import CallSpec


@pytest.mark.parametrize("dim", [16, 40, 72, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("word_loads", [False, True], ids=["tile", "words"])
def test_both_load_forms_and_the_unpack(dim, dtype, word_loads, helpers):
    x = helpers.strided(torch.randn(2, 3, 21, dim).to(dtype))
    x[0, 1, 3, 5] = float("nan")  # a NaN channel: sign bit 0 (-1), NaN scalar on that row
    x[1, 0, 2, :7] = -0.0  # -0.0 counts as >= 0
    x[1, 2, 4, 1] = 0.3  # exactly on a rounded clip threshold
    spec = CallSpec(scale=1.0, weighting="mean_abs", ste_clip=0.3)
    bits, clip, eff, sums, maxes, signs = head_stats(x, None, spec, eff=True, signs=True, head_max=False,
                                                     word_loads=word_loads)
    xp = reference.with_planes(x, spec)
    assert torch.equal(bits, reference.pack_signs(xp)) and torch.equal(clip, reference.clip_bits(xp, spec))
    assert torch.equal(eff.isnan(), reference.effective_scalars(x, None, CallSpec(scale=1.0, weighting="none")).isnan())
    assert torch.equal(eff.nan_to_num(2.0).unique(), torch.tensor([1.0, 2.0])) and maxes is None
    torch.testing.assert_close(sums, x.float().abs().sum(dim=(2, 3)), rtol=1e-6, atol=0, equal_nan=True)
    assert torch.equal(unpack_signs(bits, dim), signs) and not signs[..., dim:].any()
    assert torch.equal(signs[..., :dim].float(), reference.sgn(x.float()).nan_to_num(-1.0))


def test_word_loads_write_bits_without_save_bits():
    x = torch.randn(1, 2, 9, 40)
    spec = CallSpec(scale=1.0, save_bits=False, grad_mode="hamming")
    assert head_stats(x, None, spec, eff=True, word_loads=True)[0].shape[-1] == 2  # "v1": bits always
    assert head_stats(x, None, spec, eff=True)[0].shape[-1] == 0
    with pytest.raises(ValueError, match="word_loads writes eff rows"):
        head_stats(x, None, spec, eff=True, head_max=True, word_loads=True)


def test_mean_abs_sums_token_seed_and_head_max(helpers):
    x = helpers.strided(torch.randn(2, 2, 33, 72))
    given = torch.rand(2, 2, 33) + 0.5
    spec = CallSpec(scale=1.0, weighting="mean_abs", grad_mode="hamming")
    _, clip, eff, sums, maxes, _ = head_stats(x, None, spec, eff=True, head_max=False)
    assert clip.shape[-1] == 0 and maxes is None
    assert torch.equal(eff, torch.ones_like(eff))  # the "v1" option set scales these by the head mean
    torch.testing.assert_close(sums / (33 * 72), x.abs().mean(dim=(2, 3)), rtol=1e-6, atol=0)
    token = CallSpec(scale=1.0, weighting="token")
    _, _, eff, sums, maxes, _ = head_stats(x, given, token, eff=True)
    assert torch.equal(eff[..., 0], given) and sums is None
    assert torch.equal(maxes, given.amax(dim=2))
    with pytest.raises(ValueError, match="head_max=True needs eff=True"):
        head_stats(x, given, token, eff=False, head_max=True)


@pytest.mark.parametrize("dim", [16, 72, 128])
def test_integer_scores_bit_for_bit(dim, helpers):
    q, k, *_, spec = helpers.make_call(n=37, m=29, dim=dim)
    qb, _, _, _, _, qs = head_stats(q, None, spec, eff=False, signs=True)
    kb, _, _, _, _, ks = head_stats(k, None, spec, eff=False, signs=True)
    ref = reference.integer_scores(qb, kb, dim, torch.int64)[..., 0, 0]
    assert torch.equal(integer_scores(qb, kb, dim, from_bits=True).long(), ref)
    assert torch.equal(integer_scores(qs, ks, dim, from_bits=False).long(), ref)
