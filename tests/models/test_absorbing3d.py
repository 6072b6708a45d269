"""Absorbing transformer over 3D code grids: shapes, the mask state, every preset binarizes its attention."""
import pytest
import torch
import torch.nn.functional as F

from bitlower.models.absorbing3d import AbsorbingConfig, AbsorbingTransformer3D, absorbing3d
from bitlower.runtime import PRESETS, binarize_, preset

CFG = AbsorbingConfig(latent_grid=(2, 3, 2), codebook_heads=2, codebook_size=4, width=32, depth=2, num_heads=2)


def test_logits_shape_and_input_check():
    torch.manual_seed(0)
    model = AbsorbingTransformer3D(CFG)
    codes = torch.randint(0, 5, (3, 12, 2))  # 4 = the mask
    assert model(codes).shape == (3, 12, 2, 4)
    with pytest.raises(ValueError, match=r"expected codes \(B, 12, 2\)"):
        model(torch.zeros(3, 11, 2, dtype=torch.long))


def test_sub_code_tables_are_separate_and_the_mask_has_its_own_row():
    torch.manual_seed(0)
    model = AbsorbingTransformer3D(CFG).eval()
    a = torch.zeros(1, 12, 2, dtype=torch.long)
    b = a.clone()
    b[0, 5] = torch.tensor([1, 0])  # change one sub-code of one token
    c = a.clone()
    c[0, 5] = torch.tensor([4, 4])  # mask that token
    out_a, out_b, out_c = model(a), model(b), model(c)
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, out_c)
    assert model.tok_embed.num_embeddings == 2 * 5


def test_the_seed_configuration():
    cfg = absorbing3d().config
    assert (cfg.num_tokens, cfg.depth, cfg.width, cfg.codebook_heads, cfg.codebook_size) == (1680, 8, 384, 8, 64)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_binarizes_every_block(name):
    torch.manual_seed(0)
    model = AbsorbingTransformer3D(CFG)
    kwargs = {"bias": "head"} if name == "binary_attention" else {}
    report = binarize_(model, preset(name, keep_teacher=False, **kwargs))
    assert sorted(report.binarized) == ["blocks.0.attn", "blocks.1.attn"]
    logits = model(torch.randint(0, 5, (2, 12, 2)))
    assert logits.shape == (2, 12, 2, 4) and torch.isfinite(logits).all()


def test_dynamo_graph_holds_one_sdpa_per_block():
    """What the bitlower backend receives: one graph (fullgraph) with one SDPA call per block."""
    torch.manual_seed(0)
    model = AbsorbingTransformer3D(CFG).eval()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention)
        return gm.forward

    codes = torch.randint(0, 5, (2, 12, 2))
    torch._dynamo.reset()
    out = torch.compile(model, backend=backend, fullgraph=True)(codes)
    torch.testing.assert_close(out, model(codes))
    assert len(seen) == CFG.depth
    assert all(n.kwargs.get("scale") == (CFG.width // CFG.num_heads) ** -0.5 for n in seen)
