"""ViT / DeiT: published parameter counts, checkpoint key tables, forward shapes, training."""

from __future__ import annotations

import pytest
import torch

from bitlower.models import (
    ViTConfig,
    VisionTransformer,
    create_model,
    deit_base_distilled,
    deit_small_distilled,
    deit_tiny_distilled,
    resample_pos_embed,
    vit_base,
    vit_small,
    vit_tiny,
)


def timm_vit_shapes(dim, depth, patch, img, in_chans=3, num_classes=1000, distilled=False):
    """Key → shape table of a ViT/DeiT checkpoint as the public releases name it."""
    grid = (img // patch) ** 2
    prefix = 2 if distilled else 1
    table = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, prefix + grid, dim),
        "patch_embed.proj.weight": (dim, in_chans, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "head.weight": (num_classes, dim),
        "head.bias": (num_classes,),
    }
    if distilled:
        table.update(
            {
                "dist_token": (1, 1, dim),
                "head_dist.weight": (num_classes, dim),
                "head_dist.bias": (num_classes,),
            }
        )
    for i in range(depth):
        b = f"blocks.{i}."
        table.update(
            {
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "attn.qkv.weight": (3 * dim, dim),
                b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim),
                b + "attn.proj.bias": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
                b + "mlp.fc1.weight": (4 * dim, dim),
                b + "mlp.fc1.bias": (4 * dim,),
                b + "mlp.fc2.weight": (dim, 4 * dim),
                b + "mlp.fc2.bias": (dim,),
            }
        )
    return table


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def table_size(table) -> int:
    return sum(torch.Size(shape).numel() for shape in table.values())


PUBLISHED = [
    # (factory, overrides, parameters as published, dim, depth, distilled)
    (vit_tiny, {}, 5_717_416, 192, 12, False),
    (vit_small, {}, 22_050_664, 384, 12, False),
    (vit_base, {}, 86_567_656, 768, 12, False),
    (deit_tiny_distilled, {}, 5_910_800, 192, 12, True),
    (deit_small_distilled, {}, 22_436_432, 384, 12, True),
    (deit_base_distilled, {}, 87_338_192, 768, 12, True),
    # DINO ViT-S/8 backbone (21,670,272 without the 385,000-parameter head) plus the head.
    (vit_small, {"patch_size": 8}, 22_055_272, 384, 12, False),
]


@pytest.mark.parametrize("case", PUBLISHED, ids=lambda c: f"{c[0].__name__}{c[1]}")
def test_parameter_count_and_key_table(case):
    factory, overrides, count, dim, depth, distilled = case
    with torch.device("meta"):
        model = factory(**overrides)
    patch = overrides.get("patch_size", 16)
    table = timm_vit_shapes(dim, depth, patch, 224, distilled=distilled)
    assert n_params(model) == count == table_size(table)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == table


@pytest.mark.parametrize("distilled", [False, True])
def test_strict_load_of_a_generated_checkpoint(distilled):
    torch.manual_seed(0)
    cfg = ViTConfig(48, 16, 1, 7, 64, 2, 4, distilled=distilled)
    table = timm_vit_shapes(64, 2, 16, 48, in_chans=1, num_classes=7, distilled=distilled)
    state = {k: torch.randn(shape) for k, shape in table.items()}
    model = VisionTransformer(cfg)
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    missing = dict(state)
    missing.pop("norm.bias")
    with pytest.raises(RuntimeError, match="norm.bias"):
        VisionTransformer(cfg).load_state_dict(missing, strict=True)


@pytest.mark.parametrize(
    "img,patch,in_chans,grid", [(32, 8, 3, (4, 4)), (32, 16, 1, (2, 2)), ((24, 40), 8, 2, (3, 5))]
)
def test_forward_shapes_and_grid_metadata(img, patch, in_chans, grid):
    cfg = ViTConfig(img, patch, in_chans, 10, 32, 2, 2)
    model = VisionTransformer(cfg).eval()
    h, w = (img, img) if isinstance(img, int) else img
    x = torch.randn(3, in_chans, h, w)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 1 + grid[0] * grid[1], 32)
    assert model(x).shape == (3, 10)
    assert all(b.attn.grid_size == grid and b.attn.num_prefix_tokens == 1 for b in model.blocks)
    norms = [model.norm] + [n for b in model.blocks for n in (b.norm1, b.norm2)]
    assert all(n.eps == 1e-6 for n in norms)  # as the checkpoints were trained
    assert all(b.mlp.act.approximate == "none" for b in model.blocks)  # exact GELU


def test_distilled_heads():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(32, 8, 3, 10, 32, 2, 2, distilled=True))
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 2 + 16, 32)
    model.train()
    assert model(x).shape == (2, 10)  # averaged unless distilled_training is set
    model.distilled_training = True
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    assert not torch.allclose(cls_logits, dist_logits)
    model.eval()
    torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)
    assert all(b.attn.num_prefix_tokens == 2 for b in model.blocks)


def test_features_only_and_bad_input_size():
    model = VisionTransformer(ViTConfig(32, 8, 3, 0, 32, 1, 2))
    assert not any("head" in k for k in model.state_dict())
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    with pytest.raises(ValueError, match="does not match"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="must divide"):
        VisionTransformer(ViTConfig(30, 8, 3, 10, 32, 1, 2))


def test_one_training_step_updates_every_parameter():
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8,
                         num_classes=10, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.1)
    model.train()
    model.distilled_training = True
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cls_logits, dist_logits = model(x)
    loss = torch.nn.functional.cross_entropy(cls_logits, y) + dist_logits.square().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert not torch.equal(p.detach(), before[name]), name


def test_resample_pos_embed_keeps_prefix_and_grid_values():
    table = torch.randn(1, 2 + 9, 8)
    same = resample_pos_embed(table, (3, 3), (3, 3), 2)
    assert same is table
    bigger = resample_pos_embed(table, (3, 3), (6, 6), 2)
    assert bigger.shape == (1, 2 + 36, 8)
    torch.testing.assert_close(bigger[:, :2], table[:, :2])
    flat = torch.ones(1, 1 + 4, 3)
    torch.testing.assert_close(resample_pos_embed(flat, (2, 2), (5, 3), 1), torch.ones(1, 16, 3))
    with pytest.raises(ValueError, match="rows"):
        resample_pos_embed(table, (4, 4), (6, 6), 2)
