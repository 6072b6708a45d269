"""Multi-head EMA codebook: nearest-entry codes, EMA updates and commitment against hand-computed values."""
import pytest
import torch

from bitlower.models.vq_codebook import MultiHeadEMACodebook

# Two heads of width 2, three entries each.
ENTRIES = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                        [[1.0, 1.0], [-1.0, -1.0], [2.0, 0.0]]], dtype=torch.float64)
Z = torch.tensor([[0.9, 0.1, 1.2, 0.8],
                  [0.1, 0.2, -0.5, -2.0]], dtype=torch.float64)
# head 0: (0.9, 0.1) -> [1, 0]; (0.1, 0.2) -> [0, 0].  head 1: (1.2, 0.8) -> [1, 1]; (-0.5, -2) -> [-1, -1].
CODES = torch.tensor([[1, 0], [0, 1]])


def hand_codebook(decay=0.5, eps=1e-5, beta=0.25):
    cb = MultiHeadEMACodebook(dim=4, heads=2, size=3, decay=decay, eps=eps, beta=beta, restart_threshold=0.0,
                              normalize=False).double()
    cb.embedding.copy_(ENTRIES)
    cb.embed_sum.copy_(ENTRIES)
    cb.initialized.fill_(True)
    return cb


def test_codes_lookup_and_commitment_match_hand_values():
    cb = hand_codebook().eval()
    out = cb(Z)
    assert torch.equal(out["codes"], CODES)
    expected = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, -1.0, -1.0]], dtype=torch.float64)
    assert torch.equal(out["quantized"], expected)
    assert torch.equal(cb.lookup(CODES), expected)
    # beta * mean squared error over the 8 values: 0.01+0.01+0.04+0.04 + 0.01+0.04+0.25+1.0 = 1.4
    assert out["commitment"].item() == pytest.approx(0.25 * 1.4 / 8, rel=1e-12)
    assert torch.equal(cb.embedding, ENTRIES)  # eval mode: no update


def test_ema_update_matches_hand_values():
    decay, eps = 0.5, 1e-5
    cb = hand_codebook(decay, eps).train()
    cb(Z)
    # counts head 0: [1, 1, 0], head 1: [1, 1, 0]; sums: head 0 e0 <- (0.1, 0.2), e1 <- (0.9, 0.1);
    # head 1 e0 <- (1.2, 0.8), e1 <- (-0.5, -2.0).
    counts = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    sums = torch.tensor([[[0.1, 0.2], [0.9, 0.1], [0.0, 0.0]],
                         [[1.2, 0.8], [-0.5, -2.0], [0.0, 0.0]]], dtype=torch.float64)
    size = decay * 1.0 + (1 - decay) * counts  # [[1, 1, 0.5], ...]
    embed_sum = decay * ENTRIES + (1 - decay) * sums
    total = size.sum(-1, keepdim=True)
    smoothed = (size + eps) / (total + 3 * eps) * total
    torch.testing.assert_close(cb.cluster_size, size, rtol=0, atol=1e-15)
    torch.testing.assert_close(cb.embed_sum, embed_sum, rtol=0, atol=1e-15)
    torch.testing.assert_close(cb.embedding, embed_sum / smoothed.unsqueeze(-1), rtol=1e-14, atol=1e-15)
    # e.g. head 0 entry 2 (unused): (0, 0.5) / (0.5 smoothed) ~ (0, 1).
    assert cb.embedding[0, 2, 1].item() == pytest.approx(1.0, abs=1e-4)


def test_straight_through_gradient_is_identity():
    cb = hand_codebook().eval()
    z = Z.clone().requires_grad_(True)
    weight = torch.randn(2, 4, dtype=torch.float64)
    (cb(z)["quantized"] * weight).sum().backward()
    torch.testing.assert_close(z.grad, weight, rtol=0, atol=0)


def test_normalized_codes_ignore_the_scale_of_each_piece():
    cb = MultiHeadEMACodebook(dim=8, heads=2, size=5).eval()
    z = torch.randn(6, 8)
    scaled = z * torch.tensor([3.0] * 4 + [0.2] * 4)
    assert torch.equal(cb.quantize(z), cb.quantize(scaled))
    assert torch.allclose(cb.embedding.norm(dim=-1), torch.ones(2, 5))


def test_first_training_batch_initialises_every_entry_from_the_data():
    torch.manual_seed(0)
    cb = MultiHeadEMACodebook(dim=4, heads=2, size=3, restart_threshold=0.0, normalize=False, decay=0.0)
    z = torch.randn(10, 4)
    out = cb.train()(z)
    assert bool(cb.initialized)
    pieces = z.view(10, 2, 2).transpose(0, 1)  # (heads, M, d)
    # The entries start on batch pieces, so each wins at least the piece it sits on...
    for h in range(2):
        assert out["codes"][:, h].unique().numel() == 3
    # ... and with decay 0 the update makes every entry the mean of the pieces it won (Laplace eps aside).
    for h in range(2):
        codes = out["codes"][:, h]
        for k in range(3):
            torch.testing.assert_close(cb.embedding[h, k], pieces[h][codes == k].mean(0), rtol=1e-4, atol=1e-5)


def test_dead_entries_restart_on_batch_vectors():
    torch.manual_seed(0)
    cb = hand_codebook(decay=0.9).float()
    cb.restart_threshold = 0.95  # unused entries decay to 0.9 < 0.95: restarted, used ones reach 1.0
    z = Z.float()
    cb.train()(z)
    pieces = z.view(2, 2, 2).transpose(0, 1)  # (heads, M, d)
    for h in range(2):
        restarted = cb.embedding[h, 2]
        assert any(torch.equal(restarted, p) for p in pieces[h])
        assert cb.cluster_size[h, 2].item() == 1.0


@pytest.mark.parametrize("kwargs", [dict(dim=10, heads=3), dict(dim=8, heads=2, decay=1.0),
                                    dict(dim=8, heads=2, size=1), dict(dim=8, heads=2, restart_threshold=-1)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        MultiHeadEMACodebook(**kwargs)
