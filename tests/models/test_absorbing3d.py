"""Absorbing transformer over 3D code grids: shapes, the mask state, every preset binarizes its attention."""
import pytest
import torch

from bitlower.counters import counters
from bitlower.counters import reset as reset_counters
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


def test_compiles_with_the_backend_in_one_graph():
    torch.manual_seed(0)
    model = AbsorbingTransformer3D(CFG).eval()
    codes = torch.randint(0, 5, (2, 12, 2))
    reset_counters()
    compiled = torch.compile(model, backend="bitlower", fullgraph=True, options={"min_seq_len": 1})
    out = compiled(codes)
    assert sum(counters["sites_rewritten"].values()) == CFG.depth  # both attentions became binary attention
    assert out.shape == (2, 12, 2, 4)
