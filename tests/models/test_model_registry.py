"""Model registry: published names, overrides, unknown names, every entry builds."""

from __future__ import annotations

import functools

import pytest
import torch

from bitlower.models import DiT, PixelTransformer, VisionTransformer, create_model, list_models
from bitlower.models import registry as registry_module


def test_published_names_are_registered():
    names = set(list_models())
    for name in [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_small_patch8",
        "vit_base_patch16_384",
        "deit_tiny_patch16_224",
        "deit_tiny_distilled_patch16_224",
        "deit_small_distilled_patch16_224",
        "deit_base_distilled_patch16_384",
        "dit_xl_2",
        "dit_s_2",
        "dit_b_4",
        "dit_l_8",
        "pixel_tiny",
        "pixel_small",
    ]:
        assert name in names, name


@pytest.mark.parametrize(
    "name,kind,fields",
    [
        ("vit_small_patch8", VisionTransformer, dict(patch_size=8, img_size=224, embed_dim=384)),
        ("vit_base_patch16_384", VisionTransformer, dict(img_size=384, embed_dim=768)),
        ("deit_tiny_distilled_patch16_224", VisionTransformer, dict(distilled=True)),
        ("deit_small_patch16_224", VisionTransformer, dict(distilled=False, embed_dim=384)),
        ("dit_b_4", DiT, dict(patch_size=4, hidden_size=768, depth=12)),
        ("pixel_tiny", PixelTransformer, dict(embed_dim=192, value_ratio=4)),
    ],
)
def test_names_map_to_the_right_config(name, kind, fields):
    with torch.device("meta"):
        model = create_model(name)
    assert isinstance(model, kind)
    for key, value in fields.items():
        assert getattr(model.config, key) == value, key


def test_overrides_reach_the_config():
    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10,
                         depth=2)
    assert model.config.patch_size == 8 and len(model.blocks) == 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(KeyError, match="vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16_244")


def test_register_model_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    tiny = functools.partial(create_model, "vit_tiny_patch16_224", depth=1)
    registry_module.register_model("my_tiny", tiny)
    assert len(create_model("my_tiny").blocks) == 1
    with pytest.raises(ValueError, match="already registered"):
        registry_module.register_model("my_tiny", tiny)
    registry_module.register_model("my_tiny", tiny, overwrite=True)


def test_every_registered_model_builds_on_meta():
    with torch.device("meta"):
        for name in list_models():
            model = create_model(name)
            assert sum(p.numel() for p in model.parameters()) > 1_000_000, name
