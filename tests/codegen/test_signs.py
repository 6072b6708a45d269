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
def test_unpack_inverts_the_packed_bits(dim, helpers):
    x = helpers.strided(torch.randn(2, 3, 21, dim))
    x[0, 1, 3, 5] = float("nan")  # NaN -> sign bit 0 -> -1
    spec = CallSpec(scale=1.0, weighting="none")
    bits, _, _, _, _, signs = head_stats(x, None, spec, eff=True, signs=True)
    assert torch.equal(bits, reference.pack_signs(reference.with_planes(x, spec)))
    assert torch.equal(unpack_signs(bits, dim), signs)
    assert torch.equal(signs[..., :dim].float(), reference.sgn(x.float()).nan_to_num(-1.0))


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
