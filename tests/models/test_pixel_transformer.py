"""Pixel transformer: tokens, reduced value width, max-pool head, N = 64 and 1024, training."""

from __future__ import annotations

import pytest
import torch

from bitlower.models import (
    PixelConfig,
    PixelTransformer,
    create_model,
    load_digits_tensors,
    pixel_small,
)
from bitlower.models.pixel import pixel_coordinates


def tiny(**overrides) -> PixelTransformer:
    base = dict(img_size=8, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
    return PixelTransformer(PixelConfig(**{**base, **overrides}))


@pytest.mark.parametrize("img,chans,n", [(8, 1, 64), (28, 1, 784), (32, 3, 1024), (32, 1, 1024)])
def test_forward_shapes_at_mnist_cifar_and_digits_sizes(img, chans, n):
    model = tiny(img_size=img, in_chans=chans, depth=1).eval()
    x = torch.randn(2, chans, img, img)
    assert model.tokens(x).shape == (2, n, chans + 2)
    assert model.forward_features(x).shape == (2, n, 32)
    assert model(x).shape == (2, 10)
    attn = model.blocks[0].attn
    assert attn.grid_size == (img, img) and attn.num_prefix_tokens == 0


def test_value_path_is_a_quarter_of_the_width():
    model = tiny(embed_dim=64, num_heads=4)
    attn = model.blocks[0].attn
    assert (attn.head_dim, attn.value_head_dim) == (16, 4)
    assert attn.qkv.out_features == 64 + 64 + 16
    assert attn.proj.weight.shape == (64, 16)
    with torch.device("meta"):
        small = pixel_small()
    assert small.blocks[0].attn.value_head_dim == small.blocks[0].attn.head_dim // 4 == 16
    with pytest.raises(ValueError, match="value_ratio"):
        PixelConfig(embed_dim=30, value_ratio=4)


def test_tokens_are_channels_then_normalised_coordinates():
    model = tiny(img_size=(2, 3), in_chans=2)
    x = torch.arange(12.0).reshape(1, 2, 2, 3)
    tokens = model.tokens(x)  # (1, 6, 4)
    torch.testing.assert_close(tokens[0, :, :2], x[0].flatten(1).T)
    want = torch.tensor([[-1, -1], [-1, 0], [-1, 1], [1, -1], [1, 0], [1, 1]], dtype=torch.float32)
    torch.testing.assert_close(tokens[0, :, 2:], want)
    torch.testing.assert_close(pixel_coordinates(1, 1), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="does not match"):
        model(torch.randn(1, 2, 3, 3))


def test_head_reads_the_max_over_tokens():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(3, 1, 8, 8)
    feats = model.forward_features(x)
    torch.testing.assert_close(model(x), model.head(feats.max(dim=1).values))
    assert not torch.allclose(model(x), model.head(feats.mean(dim=1)))


def test_registry_name_and_parameter_count():
    with torch.device("meta"):
        model = create_model("pixel_tiny")
    C, Cv, L = 192, 48, 12
    per_block = 2 * 2 * C + (C * (2 * C + Cv) + 2 * C + Cv) + (Cv * C + C) + (8 * C * C + 5 * C)
    want = (5 * C + C) + L * per_block + 2 * C + (C * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == want
    assert model.config.in_chans == 3 and model.grid_size == (32, 32)


def test_training_on_digits_learns_beyond_the_label_prior():
    torch.manual_seed(0)
    x, y = load_digits_tensors("train")
    x, y = x[:64], y[:64]
    prior = torch.bincount(y, minlength=10).float() / len(y)
    prior_loss = -(prior * prior.clamp_min(1e-12).log()).sum().item()  # best label-only loss
    model = tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):  # pixel tokens learn slowly: about 2.32 → 1.7 in 40 full-batch steps
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < prior_loss - 0.3
    assert all(p.grad is not None for p in model.parameters())


def test_one_step_at_1024_tokens():
    torch.manual_seed(0)
    x, y = load_digits_tensors("test", image_size=32)
    model = tiny(img_size=32, embed_dim=16, depth=1).train()
    loss = torch.nn.functional.cross_entropy(model(x[:2]), y[:2])
    loss.backward()
    assert torch.isfinite(loss)
    assert model.pixel_embed.weight.grad.abs().sum() > 0
