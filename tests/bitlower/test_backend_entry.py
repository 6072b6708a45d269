"""The backend as a product: registration, options, modes, no-attention graphs, whole models."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import bitlower
from bitlower.backend import bitlower_backend, bitlower_eager_backend, split_options
from bitlower.counters import counters
from bitlower.explain import explain
from bitlower.testing import TOLERANCE, assert_close
from bitlower.models import Attention, DiT, DiTConfig, VisionTransformer, ViTConfig


def test_registered_through_the_entry_point():
    assert "bitlower" in torch._dynamo.list_backends()
    assert torch._dynamo.lookup_backend("bitlower") is bitlower_backend


def test_unknown_options_raise_a_clear_error():
    torch._dynamo.reset()
    f = torch.compile(lambda x: x + 1, backend="bitlower", options={"weigthing": "mean_abs"})
    with pytest.raises(Exception, match="unknown option.*weigthing.*bitlower"):
        f(torch.randn(3))


@pytest.mark.parametrize("options, match", [
    ({"weighting": "token"}, "weighting must be one of"),
    ({"min_seq_len": -1}, "min_seq_len"),
    ({"skip": [3]}, "skip must be"),
])
def test_invalid_option_values_raise(options, match):
    with pytest.raises(ValueError, match=match):
        split_options(options)


def test_inductor_keys_and_modes_pass_through():
    config, patches = split_options({"grad_mode": "hamming", "max_autotune": False})
    assert config.grad_mode == "hamming" and patches == {"max_autotune": False}
    with pytest.raises(ValueError, match="unknown mode"):
        bitlower_backend(torch.fx.symbolic_trace(lambda x: x), [torch.randn(1)], mode="fastest")


class NoAttention(torch.nn.Module):
    """An MLP with a softmax over logits: nothing here is attention."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.norm = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8), torch.nn.LayerNorm(16)

    def forward(self, x):
        return F.softmax(self.fc2(F.gelu(self.fc1(self.norm(x)))), dim=-1)


def test_graphs_without_attention_compile_to_exactly_what_inductor_produces():
    model, x = NoAttention().eval(), torch.randn(4, 16)
    codes = {}
    for backend in ("inductor", "bitlower"):
        torch._dynamo.reset()
        with torch._inductor.config.patch(fx_graph_cache=False):
            _, code = run_and_get_code(torch.compile(model, backend=backend, fullgraph=True), x)
        codes[backend] = [re.sub(r"# AOT ID: \['\d+_", "# AOT ID: ['N_", c) for c in code]  # a per-process counter
    assert codes["bitlower"] == codes["inductor"]


def test_no_graph_breaks_and_the_compiled_code_holds_the_binary_operator():
    torch._dynamo.reset()
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))
    fn = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), backend="bitlower")
    with torch._inductor.config.patch(fx_graph_cache=False):
        out, (code, *_) = run_and_get_code(fn, q, k, v)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks
    # Inductor traces into the operator's CPU body: packed sign bits (shifts into and out of int32
    # words) instead of a softmax of q kᵀ
    assert "bitwise_left_shift" in code or "<<" in code
    assert "bitwise_right_shift" in code or ">>" in code
    assert "scaled_dot_product" not in code
    torch.testing.assert_close(out, bitlower.binary_attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_transformer_encoder_layer_is_a_documented_skip():
    torch._dynamo.reset()
    layer = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    x = torch.randn(2, 9, 32)
    for grad_mode in (torch.enable_grad, torch.no_grad):  # no_grad takes the fused inference path
        torch._dynamo.reset()
        with grad_mode():
            report = explain(layer, x)
        assert [(s.pattern, s.status, s.reason) for s in report.sites] == [
            ("multi_head_attention", "skipped", "multi_head_attention_opaque")]
    torch._dynamo.reset()
    out = torch.compile(layer, backend="bitlower", fullgraph=True)(x)
    torch.testing.assert_close(out, layer(x))  # left exactly as Inductor compiles it


def _vit():
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    return VisionTransformer(cfg), (torch.randn(2, 3, 32, 32),)


def _dit():
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10,
                    class_dropout_prob=0.0)  # no random label dropout in train mode
    return DiT(cfg), (torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.randint(0, 10, (2,)))


def _binary_reference(model):
    """A copy of ``model`` whose attention calls ``bitlower.binary_attention`` directly."""
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if isinstance(module, Attention):
            module.attend = lambda q, k, v, m=module: bitlower.binary_attention(q, k, v, scale=m.scale)
    return ref


@pytest.mark.parametrize("build", [_vit, _dit], ids=["vit", "dit"])
def test_project_models_have_every_site_rewritten(build):
    """Through AOTAutograd without Inductor (a whole model takes 30-60 s in Inductor on 2 cores)."""
    torch.manual_seed(0)
    model, inputs = build()
    for p in model.parameters():  # DiT's adaLN-Zero starts with zero gates: no gradient would reach attention
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, std=0.02)
    torch._dynamo.reset()
    report = explain(model.eval(), *inputs)
    assert report.counts == {"found": 2, "rewritten": 2, "skipped": 0}, str(report)
    assert [s.module_path for s in report.sites] == ["blocks.0.attn", "blocks.1.attn"]
    torch._dynamo.reset()
    before = sum(counters["sites_rewritten"].values())
    compiled = torch.compile(model.train(), backend=bitlower_eager_backend, fullgraph=True)
    ref = _binary_reference(model)
    out, want = compiled(*inputs), ref(*inputs)
    assert sum(counters["sites_rewritten"].values()) - before == 2
    assert_close("model output", out, want, TOLERANCE[torch.float32])
    out.square().mean().backward()
    want.square().mean().backward()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        if "attn.qkv" in name:
            assert p.grad.abs().sum() > 0, name
            assert_close(name, p.grad, p_ref.grad, TOLERANCE[torch.float32])
