"""Packed-sign layout and the Hamming identity (SPEC §2)."""
import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from bitlower.packing import hamming_dot, num_words, pack_signs, popcount32, sgn, unpack_bits, unpack_signs


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), m=st.integers(1, 9), d=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_hamming_equals_pm1_matmul_exactly(n, m, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, n, d, generator=gen)
    k = torch.randn(2, m, d, generator=gen)
    q[q.abs() < 0.1] = 0.0  # exact zeros are +1
    expected = (sgn(q).double() @ sgn(k).double().transpose(-1, -2)).long()
    got = hamming_dot(pack_signs(q), pack_signs(k), d)
    assert torch.equal(got, expected)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(d, seed):
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(seed))
    words = pack_signs(x)
    assert words.dtype == torch.int32 and words.shape == (3, num_words(d))
    assert torch.equal(unpack_signs(words, d), sgn(x))
    assert torch.equal(pack_signs(unpack_signs(words, d)), words)


def test_padding_channels_are_zero():
    x = torch.full((1, 40), -1.0)  # 40 channels: word 1 holds 8 real bits
    words = pack_signs(x)
    assert words[0, 1].item() == 0 and words[0, 0].item() == 0
    x = torch.ones(1, 40)
    assert pack_signs(x)[0, 1].item() == 0xFF
    assert pack_signs(x)[0, 0].item() == -1  # all 32 bits set, stored as int32


def test_bit_layout_channel_32w_plus_b():
    x = -torch.ones(1, 70)
    x[0, 33] = 1.0  # word 1, bit 1
    x[0, 64] = 1.0  # word 2, bit 0
    assert pack_signs(x).tolist() == [[0, 2, 1]]
    assert unpack_bits(pack_signs(x), 70).nonzero()[:, 1].tolist() == [33, 64]


def test_sign_convention_at_zero():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    assert sgn(x).tolist() == [1.0, 1.0, 1.0, -1.0]
    assert unpack_signs(pack_signs(x), 4).tolist() == [1.0, 1.0, 1.0, -1.0]


def test_popcount_matches_python():
    values = torch.tensor([0, 1, -1, 0x7FFFFFFF, -0x80000000, 0x12345678, -12345], dtype=torch.int32)
    expected = [bin(int(v) & 0xFFFFFFFF).count("1") for v in values]
    assert popcount32(values).tolist() == expected


def test_hamming_chunking_is_invisible():
    q, k = torch.randn(1, 50, 64), torch.randn(1, 30, 64)
    qb, kb = pack_signs(q), pack_signs(k)
    assert torch.equal(hamming_dot(qb, kb, 64, chunk=7), hamming_dot(qb, kb, 64, chunk=1000))


@settings(max_examples=20, deadline=None)
@given(planes=st.sampled_from([1, 2]), d=st.integers(1, 80), seed=st.integers(0, 2**31 - 1))
def test_integer_scores_float_matmul_equals_popcount(planes, d, seed):
    """The reference's float path (+-1 matmul) gives the popcount path's integers bit for bit."""
    from bitlower.reference import integer_scores

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 1, 7, planes, d, generator=gen)
    k = torch.randn(2, 1, 9, planes, d, generator=gen)
    qbits, kbits = pack_signs(q), pack_signs(k)
    exact = integer_scores(qbits, kbits, d, torch.int64)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(integer_scores(qbits, kbits, d, dtype), exact.to(dtype))
