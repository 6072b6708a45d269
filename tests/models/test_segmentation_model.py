"""Segmentation ViT: shapes, parameter counts, decoder resolution, timm/DINO state-dict loading, re-init."""
from __future__ import annotations

import pytest
import torch

from bitlower.models import (
    NO_REINIT,
    SEED_REINIT,
    ReinitConfig,
    SegmentationConfig,
    SegmentationDecoder,
    create_model,
    load_encoder,
    reinitialise_,
    seg_vit,
    vit_config,
)
from bitlower.models.seg_pretrained import count_parameters

TINY = dict(depth=2, embed_dim=32, num_heads=2, decoder_width=64)


def _pointwise(c_in, c_mid, c_out, k=1):
    """conv + BatchNorm (weight, bias) + conv, with biases."""
    return c_in * c_mid * k * k + c_mid + 2 * c_mid + c_mid * c_out * k * k + c_out


def decoder_parameters(c, classes, width, levels):
    """The seed's decoder (A.1) counted by hand: stem, per level shuffle/local/up, 3x3 refine, head."""
    total = _pointwise(c, width, width)
    for i in range(levels):
        w = width // 2**i
        total += _pointwise(w // 4, w, w // 4) + _pointwise(w, w, w) + w * (w // 2) * 4 + w // 2
    last = width // 2**levels
    refine = _pointwise(last, 2 * last, last, 3) + _pointwise(last, 2 * last, last)
    return total + refine + _pointwise(last, last, classes)


def encoder_parameters(c, depth, tokens, in_chans, patch, value_dim):
    block = 4 * c + c * (2 * c + value_dim) + 2 * c + value_dim + value_dim * c + c + 8 * c * c + 5 * c
    return in_chans * c * patch * patch + c + c + tokens * c + depth * block + 2 * c


@pytest.mark.parametrize("reduction", [1, 4])
def test_vit_s8_parameter_counts_match_the_formula_and_the_seed(reduction):
    model = seg_vit("small", img_size=320, in_chans=3, num_classes=14, value_reduction=reduction)
    enc, dec = count_parameters(model.encoder), count_parameters(model.decoder)
    assert enc == encoder_parameters(384, 12, 1 + 40 * 40, 3, 8, 384 // reduction)
    assert dec == decoder_parameters(384, 14, 1024, 3)
    assert abs(dec - 8e6) < 0.5e6  # seed 3.1: "8M parameters in the ... decoder"
    if reduction == 4:  # seed 3.1: "19M ... parameters in the transformer encoder" (Dv = 16)
        assert abs(enc - 19e6) < 0.5e6
        attn = model.encoder.blocks[0].attn
        assert (attn.head_dim, attn.value_head_dim) == (64, 16)


@pytest.mark.parametrize("size,patch", [((32, 32), 8), ((48, 64), 8), ((40, 24), 8), ((64, 32), 16), ((16, 16), 4)])
def test_output_has_the_input_resolution(size, patch):
    model = seg_vit("tiny", patch_size=patch, img_size=size, in_chans=1, num_classes=5, **TINY)
    out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 5, *size)
    assert model.decoder.scale == patch


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (7, 2)])
def test_decoder_upsamples_by_two_per_block(grid):
    for levels in (1, 2, 3):
        dec = SegmentationDecoder(16, 3, width=64, num_up=levels)
        assert dec(torch.randn(2, 16, *grid)).shape == (2, 3, grid[0] * 2**levels, grid[1] * 2**levels)


def test_features_are_the_patch_tokens_as_a_grid():
    model = seg_vit("tiny", img_size=(16, 24), in_chans=1, num_classes=3, **TINY).eval()
    x = torch.randn(1, 1, 16, 24)
    tokens = model.encoder.forward_features(x)  # (1, 1 + 2*3, C)
    feats = model.features(x)  # (1, C, 2, 3)
    assert feats.shape == (1, 32, 2, 3)
    assert torch.equal(feats[0, :, 1, 2], tokens[0, 1 + 1 * 3 + 2])


@pytest.mark.parametrize("kwargs,match", [
    (dict(patch_size=12), "power of two"),
    (dict(num_classes=0), "num_classes"),
    (dict(value_reduction=3), "value_reduction"),
    (dict(decoder_width=36), "decoder width"),
    (dict(depht=2), "unknown segmentation model fields"),
])
def test_bad_configs_name_the_field(kwargs, match):
    args = dict(img_size=48, **TINY)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        seg_vit("tiny", **args)


def test_encoder_with_a_head_is_refused():
    with pytest.raises(ValueError, match="no head"):
        SegmentationConfig(vit_config("tiny", num_classes=10))


def test_registry_builds_segmentation_models():
    model = create_model("seg_vit_small_patch8", img_size=32, num_classes=4, depth=1, decoder_width=64)
    assert model.config.patch == 8 and model.config.encoder.embed_dim == 384
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def timm_vit_state_dict(depth, dim, grid, patch, in_chans=3, mlp=4):
    """Random tensors under the names and shapes timm's VisionTransformer (DINO, no head) stores."""
    g = torch.Generator().manual_seed(0)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim),
              "patch_embed.proj.weight": (dim, in_chans, patch, patch), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                       b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                       b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                       b + "mlp.fc1.weight": (mlp * dim, dim), b + "mlp.fc1.bias": (mlp * dim,),
                       b + "mlp.fc2.weight": (dim, mlp * dim), b + "mlp.fc2.bias": (dim,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_dino_vit_s8_state_dict_loads_strictly_into_the_encoder():
    state = timm_vit_state_dict(12, 384, 28, 8)  # vit_small_patch8_224.dino
    model = seg_vit("small", img_size=224, num_classes=2, decoder_width=64)
    model.encoder.load_state_dict(state, strict=True)
    own = model.encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_load_encoder_resamples_narrows_and_reinitialises_as_the_seed():
    state = timm_vit_state_dict(6, 32, 4, 8)
    torch.manual_seed(0)
    model = seg_vit("tiny", img_size=48, num_classes=3, depth=6, embed_dim=32, num_heads=2, decoder_width=64,
                    value_reduction=4)
    names = load_encoder(model, state, SEED_REINIT)
    own = model.encoder.state_dict()
    assert own["pos_embed"].shape == (1, 1 + 36, 32)  # 4x4 grid resampled to 6x6
    assert torch.equal(own["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    for i in range(6):
        kept = torch.equal(own[f"blocks.{i}.mlp.fc1.weight"], state[f"blocks.{i}.mlp.fc1.weight"])
        assert kept == (i < 4)  # seed A.1: MLPs of blocks 0-3 kept, 4+ re-initialised
        assert torch.equal(own[f"blocks.{i}.norm1.weight"], torch.ones(32)) == (i >= 4)
        assert own[f"blocks.{i}.attn.qkv.weight"].shape == (2 * 32 + 8, 32)
        assert own[f"blocks.{i}.attn.qkv.weight"].std() < 0.05  # trunc-normal std 0.02, not the N(0, 1) loaded
    assert "blocks.0.attn" in names and "blocks.5.mlp" in names and "blocks.3.mlp" not in names


def test_load_encoder_refuses_what_does_not_fit():
    model = seg_vit("tiny", img_size=32, num_classes=3, depth=2, embed_dim=32, num_heads=2, decoder_width=64,
                    value_reduction=4)
    state = timm_vit_state_dict(2, 32, 4, 8)
    with pytest.raises(ValueError, match="attn.qkv.weight"):  # narrowed values need re-initialised attention
        load_encoder(model, state, NO_REINIT)
    del state["norm.bias"]
    with pytest.raises(ValueError, match="missing \\['norm.bias'\\]"):
        load_encoder(model, state)
    with pytest.raises(ValueError, match="unexpected"):
        load_encoder(model, {**timm_vit_state_dict(3, 32, 4, 8)})


def test_reinitialise_without_loading_changes_only_the_chosen_parts():
    model = seg_vit("tiny", img_size=32, num_classes=3, depth=3, embed_dim=32, num_heads=2, decoder_width=64)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    reinitialise_(model, ReinitConfig(attention=False, mlp_from=2))
    after = model.encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("blocks.2.mlp.") for k in changed)


def hf_from_timm(state):
    """The same tensors under transformers' ViTModel names (q, k, v split), plus a pooler."""
    dim = state["cls_token"].shape[-1]
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"],
           "pooler.dense.weight": torch.zeros(dim, dim), "pooler.dense.bias": torch.zeros(dim)}
    for leaf in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{leaf}"] = state[f"patch_embed.proj.{leaf}"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    names = {"attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
             "norm1": "layernorm_before", "norm2": "layernorm_after"}
    for i in range(depth):
        for leaf in ("weight", "bias"):
            q, k, v = state[f"blocks.{i}.attn.qkv.{leaf}"].chunk(3)
            for part, t in (("query", q), ("key", k), ("value", v)):
                out[f"encoder.layer.{i}.attention.attention.{part}.{leaf}"] = t
            for timm_name, hf_name in names.items():
                out[f"encoder.layer.{i}.{hf_name}.{leaf}"] = state[f"blocks.{i}.{timm_name}.{leaf}"]
    return out


def test_transformers_named_dino_state_dict_loads_like_the_timm_one():
    state = timm_vit_state_dict(2, 32, 4, 8)
    model = seg_vit("tiny", img_size=32, num_classes=3, depth=2, embed_dim=32, num_heads=2, decoder_width=64)
    load_encoder(model, hf_from_timm(state), NO_REINIT)
    own = model.encoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_a_transformers_vit_model_and_the_encoder_compute_the_same_tokens():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                 image_size=32, patch_size=8, layer_norm_eps=1e-6, qkv_bias=True)
    torch.manual_seed(0)
    hf = transformers.ViTModel(cfg).eval()
    model = seg_vit("tiny", img_size=32, num_classes=3, depth=2, embed_dim=32, num_heads=2, decoder_width=64).eval()
    load_encoder(model, hf.state_dict(), NO_REINIT)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state.double()
        got = model.encoder.forward_features(x).double()
    assert (got - expected).abs().max() < 1e-5
