"""binarize_ on each registered attention type: learned parts, outputs vs hand-written operator calls,
reports, the teacher copy and atomicity."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bitlower
from bitlower.models import vit_tiny
from bitlower.relpos import table_rows
from bitlower.runtime import (AttentionHandler, BinarizeConfig, Geometry, attention_cores, binarize_, preset,
                              register_attention, unregister_attention)
from bitlower.runtime.registry import swap_class

DIM, HEADS, HEAD_DIM = 32, 2, 16


def tiny_vit(**kw):
    torch.manual_seed(0)
    return vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=2, num_classes=10, embed_dim=DIM, num_heads=HEADS, **kw)


def test_vit_relpos_parameters_and_output_match_operator():
    model = tiny_vit()
    attn = model.blocks[0].attn
    x = torch.randn(3, 17, DIM)
    q, k, v = attn.project_qkv(x)
    report = binarize_(model, preset("binary_attention"))
    assert sorted(report.binarized) == ["blocks.0.attn", "blocks.1.attn"]
    table = attn.binary.rel_pos_table
    assert isinstance(table, nn.Parameter) and table.shape == (table_rows(4, 4), HEADS)
    assert report.parameters_added == 2 * table_rows(4, 4) * HEADS
    assert 0.015 < table.std().item() < 0.025  # trunc-normal std 0.02 (cut at +-2, as DeiT's init)
    expected = attn.merge_heads(bitlower.binary_attention(q, k, v, bias=table, bias_kind="table", grid=(4, 4, 1),
                                                          scale=HEAD_DIM ** -0.5))
    assert torch.equal(attn(x), expected)
    assert report.unhandled == []


@pytest.mark.parametrize("name, per_module", [
    # θ_Q and θ_K: Linear(2C, C/2) -> Linear(C/2, H); grouped: each weight split into H blocks.
    ("hamming", 2 * ((2 * DIM * DIM // 2 + DIM // 2) + (DIM // 2 * HEADS + HEADS))),
    ("hamming_g", 2 * ((2 * DIM * DIM // 2 // HEADS + DIM // 2) + (DIM // 2 * HEADS // HEADS + HEADS))),
    ("hamming_b", 0), ("sign_ste", 0), ("sign_stopgrad", 0),
])
def test_preset_parameter_counts(name, per_module):
    model = tiny_vit()
    report = binarize_(model, preset(name))
    assert report.parameters_added == 2 * per_module


def test_token_weighting_output_matches_operator():
    model = tiny_vit()
    attn = model.blocks[1].attn
    x = torch.randn(2, 17, DIM)
    q, k, v = attn.project_qkv(x)
    binarize_(model, preset("hamming"))
    core = attn.binary
    a, b = core.theta_q(q), core.theta_k(k)
    assert torch.equal(a, torch.ones_like(a))  # θ's last layer starts at weight 0, bias 1
    expected = bitlower.binary_attention(q, k, v, weighting="token", a=a, b=b, grad_mode="hamming",
                                         scale=HEAD_DIM ** -0.5)
    assert torch.equal(attn(x), attn.merge_heads(expected))


def test_head_bias_and_user_grid():
    model = tiny_vit()
    report = binarize_(model, BinarizeConfig(bias="head", grid=(4, 4, 1)))
    assert report.parameters_added == 2 * HEADS
    assert torch.equal(model.blocks[0].attn.binary.head_bias, torch.zeros(HEADS))


def test_mask_combines_with_learned_bias():
    core = bitlower.runtime.BinaryAttentionCore(Geometry(HEADS, HEAD_DIM, (2, 2, 1)), BinarizeConfig())
    q, k, v = (torch.randn(2, HEADS, 5, HEAD_DIM) for _ in range(3))
    keep = torch.rand(2, 1, 5, 5) > 0.3
    keep[..., 0] = True  # every row keeps a key
    out = core(q, k, v, scale=0.25, mask=keep)
    dense = bitlower.relpos.gather_table_bias(core.rel_pos_table, (2, 2, 1)) + torch.zeros(keep.shape).masked_fill(
        ~keep, float("-inf"))
    assert torch.equal(out, bitlower.binary_attention(q, k, v, bias=dense, bias_kind="dense", scale=0.25))


def test_multihead_attention_matches_hand_math():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=False)
    x = torch.randn(7, 3, DIM)  # (L, B, E)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    report = binarize_(mha, BinarizeConfig(bias="head"))
    assert list(report.binarized) == [""]
    out, weights = mha(x, x, x, key_padding_mask=pad)
    assert weights is None
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    xb = x.transpose(0, 1)  # (B, L, E)
    q, k, v = (F.linear(xb, w, b).view(3, 7, HEADS, HEAD_DIM).transpose(1, 2)
               for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
    keep = ~pad.view(3, 1, 1, 7)
    dense = mha.binary.head_bias.view(1, -1, 1, 1) + torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    o = bitlower.binary_attention(q, k, v, bias=dense, bias_kind="dense", scale=HEAD_DIM ** -0.5)
    expected = mha.out_proj(o.transpose(1, 2).reshape(3, 7, DIM)).transpose(0, 1)
    assert torch.equal(out, expected)


def test_transformer_encoder_layer_runs_binary_in_eval():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, HEADS, dim_feedforward=64, batch_first=True).eval()
    x = torch.randn(2, 6, DIM)
    with torch.no_grad():
        before = layer(x)
    binarize_(layer, BinarizeConfig(bias="none"))
    with torch.no_grad():
        after = layer(x)  # the fused fast path would ignore the binary forward and equal `before`
    assert not torch.allclose(before, after)


class Attention(nn.Module):
    """timm's ``Attention`` (layers/attention.py), reproduced under its qualified name."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm, self.k_norm, self.norm = nn.LayerNorm(self.head_dim), nn.Identity(), nn.Identity()
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(0.0), nn.Linear(dim, dim), nn.Dropout(0.0)


Attention.__module__ = "timm.layers.attention"


class PatchEmbed(nn.Module):
    grid_size = (2, 3)


class TimmLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed, self.num_prefix_tokens = PatchEmbed(), 1
        self.blocks = nn.Sequential(Attention(DIM, HEADS))


def test_timm_attention_by_qualified_name():
    torch.manual_seed(0)
    model = TimmLike()
    report = binarize_(model, preset("binary_attention"))
    assert report.binarized == {"blocks.0": "timm.Attention"}
    attn = model.blocks[0]
    assert attn.binary.geometry.grid == (2, 3, 1)
    x = torch.randn(2, 7, DIM)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    o = bitlower.binary_attention(attn.q_norm(q), k, v, bias=attn.binary.rel_pos_table, bias_kind="table",
                                  grid=(2, 3, 1), scale=attn.scale)
    assert torch.equal(attn(x), attn.proj(o.transpose(1, 2).reshape(2, 7, DIM)))


class ViTSelfAttention(nn.Module):
    """transformers 4.x ``ViTSelfAttention`` layout, reproduced under its qualified name."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)


ViTSelfAttention.__module__ = "transformers.models.vit.modeling_vit"


def test_hf_4x_self_attention_layout():
    torch.manual_seed(0)
    model = nn.Sequential(ViTSelfAttention(DIM, HEADS))
    binarize_(model, BinarizeConfig(bias="none"))
    attn = model[0]
    x = torch.randn(2, 5, DIM)
    q, k, v = (lin(x).view(2, 5, HEADS, HEAD_DIM).transpose(1, 2) for lin in (attn.query, attn.key, attn.value))
    out, probs = attn(x)
    assert probs is None
    assert torch.equal(out, bitlower.binary_attention(q, k, v).transpose(1, 2).reshape(2, 5, DIM))


def test_hf_vit_installed():
    vit = pytest.importorskip("transformers.models.vit.modeling_vit")
    from transformers import ViTConfig
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
                       image_size=8, patch_size=2, num_channels=1, num_labels=10)
    model = vit.ViTForImageClassification(config).eval()
    report = binarize_(model, preset("binary_attention"))
    assert len(report.binarized) == 2 and report.unhandled == []
    core = next(iter(attention_cores(model).values()))
    assert core.geometry.grid == (4, 4, 1)
    logits = model(pixel_values=torch.randn(2, 1, 8, 8)).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_diffusers_attention_installed():
    processor = pytest.importorskip("diffusers.models.attention_processor")
    torch.manual_seed(0)
    attn = processor.Attention(query_dim=DIM, heads=HEADS, dim_head=HEAD_DIM)
    model = nn.Sequential(attn)
    binarize_(model, BinarizeConfig(bias="head"))
    x = torch.randn(2, 6, DIM)
    q, k, v = (lin(x).view(2, 6, HEADS, HEAD_DIM).transpose(1, 2) for lin in (attn.to_q, attn.to_k, attn.to_v))
    o = bitlower.binary_attention(q, k, v, bias=attn.binary.head_bias, bias_kind="head")
    assert torch.equal(attn(x), attn.to_out[0](o.transpose(1, 2).reshape(2, 6, DIM)))


class MyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.heads = nn.Linear(DIM, 3 * DIM), HEADS

    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class BinaryMine:
    def forward(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        return self.binary(q, k, v, scale=HEAD_DIM ** -0.5).transpose(1, 2).flatten(2)


def test_unhandled_reported_then_user_registration():
    model = nn.Sequential(MyAttention(), nn.Linear(DIM, DIM))
    report = binarize_(model, BinarizeConfig(bias="none"))
    assert [(n, r) for n, _, r in report.unhandled] == [("0", "no registered handler")]
    with pytest.raises(ValueError, match="left in full precision"):
        binarize_(nn.Sequential(MyAttention()), BinarizeConfig(bias="none", strict=True))
    handler = AttentionHandler("mine", lambda m, root: Geometry(m.heads, DIM // m.heads),
                               lambda m: swap_class(m, BinaryMine))
    register_attention(MyAttention, handler)
    try:
        model = nn.Sequential(MyAttention())
        report = binarize_(model, BinarizeConfig(bias="none"))
        assert report.binarized == {"0": "mine"} and report.unhandled == []
        assert model(torch.randn(2, 4, DIM)).shape == (2, 4, DIM)
        with pytest.raises(ValueError, match="already registered"):
            register_attention(MyAttention, handler)
    finally:
        unregister_attention(MyAttention)


def test_failure_leaves_model_unchanged():
    model = nn.Sequential(tiny_vit(), nn.MultiheadAttention(DIM, HEADS))  # the MHA has no patch grid
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="needs the patch grid"):
        binarize_(model, preset("binary_attention"))
    assert not attention_cores(model)
    assert type(model[0].blocks[0].attn).__name__ == "Attention"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    binarize_(model, preset("sign_ste"))
    with pytest.raises(ValueError, match="binarized already"):
        binarize_(model, preset("sign_ste"))


def test_teacher_shares_nothing_and_stays_full_precision():
    model = tiny_vit()
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        before = model(x)
    teacher = binarize_(model, preset("binary_attention")).teacher
    assert not attention_cores(teacher) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    student_ptrs = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    assert not student_ptrs & {t.data_ptr() for t in list(teacher.parameters()) + list(teacher.buffers())}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(teacher(x), before)
