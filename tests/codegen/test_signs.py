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
from bitlower.codegen.debug import checked_memory
from bitlower.codegen.stats import head_stats, pair_stats
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


@pytest.mark.parametrize("dim", [1, 31, 32, 33, 100, 128])
def test_byte_word_unpacks_at_word_edges(dim):
    """Both unpacks (int8 for the tl.dot backward, float8 / bf16 tiles for the Gluon one) at channel counts that end
    inside a packed word and inside a four-byte output word, over a row count that ends inside a program."""
    from bitlower.codegen.hopper.backward_launcher import sign_tiles

    x = torch.randn(2, 3, 70, 1, dim, generator=torch.Generator().manual_seed(dim))
    x[..., ::5] = -0.0  # counts as >= 0
    bits = reference.pack_signs(x)
    want = torch.where(x[..., 0, :] >= 0, 1.0, -1.0)
    signs = unpack_signs(bits, dim)
    assert signs.dtype == torch.int8 and torch.equal(signs[..., :dim].float(), want) and not signs[..., dim:].any()
    for dtype in (torch.float8_e4m3fn, torch.bfloat16):
        tiles = sign_tiles(bits, dim, dtype).to(torch.float32).reshape(signs.shape)
        assert torch.equal(tiles[..., :dim], want) and not tiles[..., dim:].any(), dtype


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lengths", [(70, 70), (9, 130), (130, 9)], ids=["self", "short_q", "short_k"])
def test_sign_pair_in_one_launch(dtype, lengths):
    """q's and k's signs (cross-attention lengths too) in one launch equal one launch each, bit for bit."""
    from bitlower.codegen.sign_unpack import unpack_sign_pair

    gen = torch.Generator().manual_seed(3)
    qbits, kbits = (reference.pack_signs(torch.randn(2, 3, n, 1, 72, generator=gen)) for n in lengths)
    with checked_memory() as launched:
        pair = unpack_sign_pair(qbits, kbits, 72, dtype)
    assert launched == ["_unpack_pair_kernel"]
    for got, bits in zip(pair, (qbits, kbits)):
        alone = unpack_sign_pair(bits, None, 72, dtype)
        assert alone[1] is None and got.dtype == dtype and got.shape == (*bits.shape[:3], 128)
        raw = (lambda t: t.view(torch.uint8 if t.element_size() == 1 else torch.int16))  # noqa: E731
        assert torch.equal(raw(got), raw(alone[0]))
        want = torch.where(reference.unpack_signs(bits, 72)[..., 0, :] > 0, 1.0, -1.0)
        assert torch.equal(got[..., :72].to(torch.float32), want) and not got[..., 72:].to(torch.float32).any()
    with pytest.raises(ValueError, match="sign dtype"):
        unpack_sign_pair(qbits, kbits, 72, torch.float16)


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


@pytest.mark.parametrize("options", [dict(eff=True, word_loads=True, signs=True), dict(eff=False, signs=True),
                                     dict(eff=True, signs=True, fp8_signs=True), dict(eff=True, head_max=False)],
                         ids=["words", "tile", "fp8", "eff"])
@pytest.mark.parametrize("weighting", ["mean_abs", "token"])
def test_pair_launch_equals_two_launches(options, weighting):
    """q and k in one launch (grid axis 2) give what one launch each gives, bit for bit."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 70, 24, generator=gen)
    k = torch.randn(2, 3, 80, 48, generator=gen)[:, :, :70, ::2]  # strided, same length
    a, b = (torch.rand(2, 3, 70, generator=gen) + 0.5 for _ in range(2))
    given = (a, b) if weighting == "token" else (None, None)
    spec = CallSpec(scale=0.2, weighting=weighting, grad_mode="ste")
    with checked_memory() as launched:
        pair = pair_stats(q, k, *given, spec, **options)
    assert launched == ["_stats_kernel"]
    for got, x, g in zip(pair, (q, k), given):
        alone = head_stats(x, g, spec, **options)
        for p, s in zip(got, alone):
            assert (p is None) == (s is None)
            if p is not None:
                raw = (lambda t: t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t)  # noqa: E731
                assert torch.equal(raw(p), raw(s))


def test_pair_of_different_lengths_takes_two_launches():
    spec = CallSpec(scale=0.2)
    with checked_memory() as launched:
        pair_stats(torch.randn(1, 2, 5, 32), torch.randn(1, 2, 9, 32), None, None, spec, eff=False, signs=True)
    assert launched == ["_stats_kernel", "_stats_kernel"]
