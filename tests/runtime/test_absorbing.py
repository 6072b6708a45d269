"""Absorbing diffusion: forward process, loss against hand computation, the sampler's guarantees."""
import math

import pytest
import torch

from bitlower.models.absorbing3d import AbsorbingConfig, AbsorbingTransformer3D
from bitlower.runtime.absorbing import (AbsorbingDiffusionConfig, absorbing_loss, center_box_mask, q_sample,
                                        sample_codes, sample_time)


def test_forward_process_masks_whole_tokens_at_rate_t_over_T():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (3, 20000, 2), generator=gen)
    t = torch.tensor([1, 128, 256])
    x_t, mask = q_sample(codes, t, 256, 4, generator=gen)
    assert torch.equal(x_t[mask], torch.full_like(x_t[mask], 4))  # every sub-code of a masked token
    assert torch.equal(x_t[~mask], codes[~mask])
    assert mask[2].all()  # t = T masks everything
    for row, rate in ((0, 1 / 256), (1, 0.5)):
        sigma = math.sqrt(rate * (1 - rate) / 20000)
        assert abs(mask[row].float().mean().item() - rate) < 5 * sigma
    t = sample_time(1000, 256, "cpu", gen)
    assert t.min() >= 1 and t.max() <= 256


def hand_ce(logits, target):
    return -torch.log_softmax(logits.double(), -1)[target].item()


@pytest.mark.parametrize("kind", ["reweighted_elbo", "elbo", "mlm"])
def test_loss_matches_hand_computation(kind):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 2, 4, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, 4, (2, 3, 2), generator=gen)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    t = torch.tensor([100, 40])
    out = absorbing_loss(logits, codes, mask, t, 256, kind)
    per_item, total_ce, count = [], 0.0, 0
    for b in range(2):
        ce_sum = 0.0
        for n in range(3):
            if mask[b, n]:
                token = sum(hand_ce(logits[b, n, g], codes[b, n, g]) for g in range(2)) / 2  # mean of the heads
                ce_sum += token
                total_ce += token
                count += 1
        steps, tb, ntok = 256, t[b].item(), 3
        per_item.append({"reweighted_elbo": (1 - tb / steps) * ce_sum / (ntok * math.log(2)),
                         "elbo": steps * ce_sum / (tb * ntok * math.log(2)),
                         "mlm": ce_sum / mask[b].sum().item()}[kind])
    assert out["loss"].item() == pytest.approx(sum(per_item) / 2, rel=1e-6)
    assert out["ce"].item() == pytest.approx(total_ce / count, rel=1e-6)


def test_center_box_of_the_seed_grid():
    box = center_box_mask((10, 14, 12))
    assert box.sum() == 5 * 7 * 6 == 210
    grid = box.view(10, 14, 12)
    assert grid[2:7, 3:10, 3:9].all() and not grid[1].any() and not grid[:, :, 9:].any()
    with pytest.raises(ValueError, match="fraction"):
        center_box_mask((4, 4, 4), 0.0)


class CountingModel(torch.nn.Module):
    """Random logits; counts calls and checks that every input it sees keeps the known tokens."""

    def __init__(self, known=None, known_mask=None):
        super().__init__()
        self.calls, self.known, self.known_mask = 0, known, known_mask

    def forward(self, codes):
        self.calls += 1
        if self.known is not None:
            assert torch.equal(codes[:, self.known_mask], self.known[:, self.known_mask])
        return torch.randn(*codes.shape, 5)


def test_inpainting_fills_every_masked_token_and_keeps_every_known_one():
    gen = torch.Generator().manual_seed(0)
    known = torch.randint(0, 5, (3, 60, 2), generator=gen)
    region = center_box_mask((3, 5, 4))  # (60,)
    model = CountingModel(known, ~region)
    config = AbsorbingDiffusionConfig(sample_steps=20, temperature=0.8)
    out = sample_codes(model, tuple(known.shape), 5, config, known=known, known_mask=~region, generator=gen)
    assert not (out == 5).any()
    assert torch.equal(out[:, ~region], known[:, ~region])
    assert 1 <= model.calls <= 20


def test_unconditional_sampling_with_a_transformer_is_deterministic_given_the_seed():
    torch.manual_seed(0)
    cfg = AbsorbingConfig(latent_grid=(2, 2, 3), codebook_heads=2, codebook_size=4, width=16, depth=1, num_heads=2)
    model = AbsorbingTransformer3D(cfg).eval()
    config = AbsorbingDiffusionConfig(sample_steps=6)
    runs = [sample_codes(model, (2, 12, 2), 4, config, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].min() >= 0 and runs[0].max() < 4


def test_one_step_reveals_everything_and_low_temperature_is_argmax():
    class Fixed(torch.nn.Module):
        def forward(self, codes):
            logits = torch.zeros(*codes.shape, 4)
            logits[..., 2] = 1.0
            return logits

    config = AbsorbingDiffusionConfig(sample_steps=1, temperature=1e-4)
    out = sample_codes(Fixed(), (2, 7, 3), 4, config, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.full((2, 7, 3), 2))


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(temperature=0.0), dict(loss="l2")])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        AbsorbingDiffusionConfig(**kwargs)
