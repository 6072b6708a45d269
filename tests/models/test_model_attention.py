"""Attention: exact math against a float64 oracle, checkpoint layout, and SDPA reachability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlower.models import (
    Attention,
    DiT,
    DiTConfig,
    PixelConfig,
    PixelTransformer,
    ViTConfig,
    VisionTransformer,
)


def oracle_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Attention written out with explicit matmuls and softmax, from the module's weights."""
    B, N, C = x.shape
    H, D, Dv = attn.num_heads, attn.head_dim, attn.value_head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # (B, N, 2C + Cv)
    q = qkv[..., :C].reshape(B, N, H, D).permute(0, 2, 1, 3)  # (B, H, N, D)
    k = qkv[..., C : 2 * C].reshape(B, N, H, D).permute(0, 2, 1, 3)  # (B, H, N, D)
    v = qkv[..., 2 * C :].reshape(B, N, H, Dv).permute(0, 2, 1, 3)  # (B, H, N, Dv)
    p = torch.softmax(q @ k.transpose(-2, -1) * D**-0.5, dim=-1)  # (B, H, N, N)
    out = (p @ v).permute(0, 2, 1, 3).reshape(B, N, H * Dv)  # (B, N, Cv)
    return out @ attn.proj.weight.T + attn.proj.bias  # (B, N, C)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 3),
    tokens=st.integers(1, 23),
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([4, 8, 12]),
    value_ratio=st.sampled_from([1, 2, 4]),
)
def test_attention_matches_float64_oracle(batch, tokens, heads, head_dim, value_ratio):
    torch.manual_seed(0)
    dim = heads * head_dim  # head_dim is a multiple of value_ratio, so Dv is an integer
    attn = Attention(dim, heads, value_dim=dim // value_ratio).double()
    x = torch.randn(batch, tokens, dim, dtype=torch.float64)
    golden = oracle_attention(attn, x)
    out = attn(x)
    assert out.shape == (batch, tokens, dim)
    torch.testing.assert_close(out, golden, rtol=1e-10, atol=1e-12)
    # float32 run against the float64 golden: error at float32 rounding level.
    out32 = attn.float()(x.float())
    assert (out32.double() - golden).abs().max() <= 1e-5 * golden.abs().max() + 1e-6


def test_project_qkv_uses_the_checkpoint_layout():
    """A fused qkv of width 3C is [q | k | v], each (H, D) head-major, as the checkpoints store."""
    torch.manual_seed(0)
    attn = Attention(24, 3)
    x = torch.randn(2, 5, 24)
    q, k, v = attn.project_qkv(x)
    ref = attn.qkv(x).reshape(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
    for got, want in zip((q, k, v), ref):
        assert got.shape == (2, 3, 5, 8)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_attributes_and_reduced_value_width():
    attn = Attention(64, 4, value_dim=16)
    assert (attn.num_heads, attn.head_dim, attn.value_head_dim) == (4, 16, 4)
    assert attn.scale == 16**-0.5
    assert attn.qkv.out_features == 2 * 64 + 16 and attn.proj.in_features == 16
    assert attn.grid_size is None and attn.num_prefix_tokens == 0
    q, k, v = attn.project_qkv(torch.zeros(2, 7, 64))
    assert q.shape == k.shape == (2, 4, 7, 16) and v.shape == (2, 4, 7, 4)
    assert attn.attend(q, k, v).shape == (2, 4, 7, 4)


def test_bad_head_count_raises():
    with pytest.raises(ValueError, match="num_heads"):
        Attention(30, 4)
    with pytest.raises(ValueError, match="value_dim"):
        Attention(32, 4, value_dim=6)


def test_attend_can_be_swapped_while_projection_is_reused():
    """A subclass replacing only ``attend`` changes the math and keeps the projections."""

    class Uniform(Attention):
        def attend(self, q, k, v):
            return v.mean(dim=2, keepdim=True).expand(-1, -1, q.shape[2], -1)  # (B, H, N, Dv)

    torch.manual_seed(0)
    base, swapped = Attention(16, 2), Uniform(16, 2)
    swapped.load_state_dict(base.state_dict())
    x = torch.randn(1, 6, 16)
    out = swapped(x)
    assert not torch.allclose(out, base(x))
    assert torch.allclose(out, out[:, :1].expand_as(out))  # every token got the same mix


def _tiny_models():
    vit = VisionTransformer(ViTConfig(32, 8, 3, 10, 32, 3, 2))
    deit = VisionTransformer(ViTConfig(32, 8, 3, 10, 32, 2, 2, distilled=True))
    dit = DiT(DiTConfig(8, 2, 4, 32, 4, 2, num_classes=10))
    pixel = PixelTransformer(PixelConfig(8, 1, 10, 32, 2, 2))
    t = torch.tensor([3.0, 700.0])
    return [
        ("vit", vit, (torch.randn(2, 3, 32, 32),), (4, 4), 1, 3),
        ("deit", deit, (torch.randn(2, 3, 32, 32),), (4, 4), 2, 2),
        ("dit", dit, (torch.randn(2, 4, 8, 8), t, torch.tensor([1, 2])), (4, 4), 0, 4),
        ("pixel", pixel, (torch.randn(2, 1, 8, 8),), (8, 8), 0, 2),
    ]


@pytest.mark.parametrize("case", _tiny_models(), ids=lambda c: c[0])
def test_every_block_calls_sdpa_once(case, monkeypatch):
    _, model, inputs, grid, prefix, depth = case
    model.eval()
    expected = model(*inputs)
    calls = []
    original = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        calls.append((q.shape, k.shape, v.shape, kwargs.get("scale")))
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    torch.testing.assert_close(model(*inputs), expected)
    assert len(calls) == depth
    n_tokens = prefix + grid[0] * grid[1]
    for (qs, ks, _, scale), block in zip(calls, model.blocks):
        assert qs[2] == ks[2] == n_tokens
        assert scale == block.attn.head_dim**-0.5
        assert block.attn.grid_size == grid
        assert block.attn.num_prefix_tokens == prefix


def test_dynamo_graph_holds_one_sdpa_per_block():
    """What a compiler backend receives: one scaled_dot_product_attention node per block."""
    model = VisionTransformer(ViTConfig(16, 8, 3, 5, 16, 2, 2)).eval()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention)
        return gm.forward

    x = torch.randn(1, 3, 16, 16)
    torch._dynamo.reset()
    out = torch.compile(model, backend=backend, fullgraph=True)(x)
    torch.testing.assert_close(out, model(x))
    assert len(seen) == 2
    assert all(n.kwargs.get("scale") == 8**-0.5 for n in seen)
