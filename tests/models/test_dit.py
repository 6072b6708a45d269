"""DiT: published parameter count, checkpoint key tables, adaLN-Zero, guidance, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitlower.models import DiT, DiTConfig, create_model, dit_config, sincos_2d_pos_embed


def dit_checkpoint_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape table of a DiT checkpoint as the public releases name it."""
    C, p = cfg.hidden_size, cfg.patch_size
    tokens = (cfg.input_size // p) ** 2
    out = cfg.in_channels * (2 if cfg.learn_sigma else 1)
    table = {
        "pos_embed": (1, tokens, C),
        "x_embedder.proj.weight": (C, cfg.in_channels, p, p),
        "x_embedder.proj.bias": (C,),
        "t_embedder.mlp.0.weight": (C, 256),
        "t_embedder.mlp.0.bias": (C,),
        "t_embedder.mlp.2.weight": (C, C),
        "t_embedder.mlp.2.bias": (C,),
        "y_embedder.embedding_table.weight": (cfg.num_classes + 1, C),
        "final_layer.linear.weight": (p * p * out, C),
        "final_layer.linear.bias": (p * p * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * C, C),
        "final_layer.adaLN_modulation.1.bias": (2 * C,),
    }
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        table.update(
            {
                b + "attn.qkv.weight": (3 * C, C),
                b + "attn.qkv.bias": (3 * C,),
                b + "attn.proj.weight": (C, C),
                b + "attn.proj.bias": (C,),
                b + "mlp.fc1.weight": (4 * C, C),
                b + "mlp.fc1.bias": (4 * C,),
                b + "mlp.fc2.weight": (C, 4 * C),
                b + "mlp.fc2.bias": (C,),
                b + "adaLN_modulation.1.weight": (6 * C, C),
                b + "adaLN_modulation.1.bias": (6 * C,),
            }
        )
    return table


def tiny(**overrides) -> DiT:
    base = dict(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    return DiT(DiTConfig(**{**base, **overrides}))


def test_xl2_parameter_count_and_key_table():
    with torch.device("meta"):
        model = create_model("dit_xl_2")
    table = dit_checkpoint_shapes(model.config)
    assert sum(p.numel() for p in model.parameters()) == 675_129_632
    assert sum(torch.Size(s).numel() for s in table.values()) == 675_129_632
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == table
    assert model.blocks[0].attn.head_dim == 72 and model.grid_size == (16, 16)


@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_every_variant_matches_its_key_table(size, patch):
    with torch.device("meta"):
        model = create_model(f"dit_{size.lower()}_{patch}")
    assert model.config == dit_config(size, patch)
    table = dit_checkpoint_shapes(model.config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == table
    attn = model.blocks[0].attn
    assert attn.grid_size == (32 // patch, 32 // patch) and attn.num_prefix_tokens == 0


def test_strict_load_of_a_generated_checkpoint():
    torch.manual_seed(0)
    model = tiny()
    state = {k: torch.randn(s) for k, s in dit_checkpoint_shapes(model.config).items()}
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any("norm" in k for k in state)  # block and final norms carry no affine


def mae_sincos_table(dim: int, grid: int) -> np.ndarray:
    """The fixed table as the public DiT code writes it (numpy, width coordinate first)."""
    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)))

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


def test_pos_embed_is_the_frozen_sincos_table():
    model = tiny(input_size=12, patch_size=2, hidden_size=48, num_heads=4)
    want = torch.from_numpy(mae_sincos_table(48, 6)).float()[None]
    torch.testing.assert_close(model.pos_embed.data, want, rtol=0, atol=1e-6)
    assert not model.pos_embed.requires_grad
    assert "pos_embed" in model.state_dict()
    assert sincos_2d_pos_embed(8, (2, 3)).shape == (6, 8)


def test_adaln_zero_init_outputs_zero_and_shapes():
    torch.manual_seed(0)
    model = tiny().eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.0, 10.0, 999.0]), torch.tensor([0, 5, 10])
    out = model(x, t, y)
    assert out.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0
    for blk in model.blocks:
        assert torch.count_nonzero(blk.adaLN_modulation[1].weight) == 0
    assert tiny(learn_sigma=False)(x, t, y).shape == (3, 4, 8, 8)
    non_square = tiny(input_size=(8, 12))
    assert non_square(torch.randn(2, 4, 8, 12), t[:2], y[:2]).shape == (2, 8, 8, 12)


def _perturbed(model: DiT) -> DiT:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_unpatchify_inverts_patching():
    model = tiny(learn_sigma=False)
    img = torch.randn(2, 4, 8, 8)
    p = 2
    tokens = img.reshape(2, 4, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 4)
    torch.testing.assert_close(model.unpatchify(tokens), img, rtol=0, atol=0)


def test_forward_with_cfg():
    model = _perturbed(tiny())
    x = torch.randn(2, 4, 8, 8)
    x2, t2 = torch.cat([x, x]), torch.tensor([5.0, 50.0, 5.0, 50.0])
    y2 = torch.tensor([1, 2, 10, 10])  # conditional half, then null-class half
    cond, uncond = model(x2, t2, y2).chunk(2)
    guided = model.forward_with_cfg(x2, t2, y2, cfg_scale=4.0)
    assert guided.shape == (4, 8, 8, 8)
    want = uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4])
    torch.testing.assert_close(guided[:2, :4], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided[2:, :4], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided[:, 4:], torch.cat([cond, uncond])[:, 4:])
    same = model.forward_with_cfg(x2, t2, y2, cfg_scale=1.0)
    torch.testing.assert_close(same[:2, :4], cond[:, :4], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        model.forward_with_cfg(x2[:3], t2[:3], y2[:3], 1.0)


def test_label_dropout_uses_the_null_class():
    model = tiny(class_dropout_prob=1.0)
    labels = torch.tensor([0, 3, 9])
    null = model.y_embedder.embedding_table.weight[10]
    dropped = model.y_embedder(labels, train=True)
    torch.testing.assert_close(dropped, null.expand(3, -1))
    kept = model.y_embedder(labels, train=False)
    torch.testing.assert_close(kept, model.y_embedder.embedding_table.weight[labels])
    forced = model.y_embedder(labels, train=False, force_drop_ids=torch.tensor([0, 1, 0]))
    torch.testing.assert_close(forced[1], null)
    torch.testing.assert_close(forced[0], kept[0])
    no_null = tiny(class_dropout_prob=0.0)
    assert no_null.y_embedder.embedding_table.num_embeddings == 10


def test_training_steps_reduce_the_denoising_loss():
    torch.manual_seed(0)
    model = tiny(learn_sigma=False).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    x, noise = torch.randn(8, 4, 8, 8), torch.randn(8, 4, 8, 8)
    t, y = torch.randint(0, 1000, (8,)).float(), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(8):
        loss = (model(x + noise, t, y) - noise).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert model.pos_embed.grad is None


def test_block_matches_the_adaln_zero_formula():
    """Chunk order (shift, scale, gate) x (attention, MLP) as the checkpoints were trained."""
    model = _perturbed(tiny())
    block = model.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    w = block.adaLN_modulation[1]
    mods = (torch.nn.functional.silu(c) @ w.weight.T + w.bias).reshape(2, 6, 32)
    shift1, scale1, gate1, shift2, scale2, gate2 = mods.unbind(1)  # each (B, C)

    def ln(h):
        return torch.nn.functional.layer_norm(h, (32,), eps=1e-6)

    h = x + gate1[:, None] * block.attn(ln(x) * (1 + scale1[:, None]) + shift1[:, None])
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    inner = ln(h) * (1 + scale2[:, None]) + shift2[:, None]
    mlp = fc2(torch.nn.functional.gelu(fc1(inner), approximate="tanh"))
    torch.testing.assert_close(block(x, c), h + gate2[:, None] * mlp)


def test_timestep_embedding_is_cos_then_sin():
    from bitlower.models.layers import timestep_embedding

    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-np.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)
