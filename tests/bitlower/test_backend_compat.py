"""Optional-extra models built from configs (no weights): Hugging Face ViT and diffusers DiT.

Skipped when ``transformers`` / ``diffusers`` are absent (the ``compat`` extra).
"""
import pytest
import torch

from bitlower.backend import bitlower_eager_backend
from bitlower.counters import counters
from bitlower.explain import explain


def _rewritten() -> int:
    return sum(counters["sites_rewritten"].values())


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_transformers_vit_every_site_rewritten(impl):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 image_size=32, patch_size=8, attn_implementation=impl)
    model = transformers.ViTModel(cfg)
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    report = explain(model.eval(), pixel_values=x)
    assert report.counts == {"found": 2, "rewritten": 2, "skipped": 0}, str(report)
    assert not report.graph_breaks
    torch._dynamo.reset()
    before = _rewritten()
    compiled = torch.compile(model.train(), backend=bitlower_eager_backend, fullgraph=True)
    compiled(pixel_values=x).last_hidden_state.square().mean().backward()
    assert _rewritten() - before == 2
    grads = [p.grad for n, p in model.named_parameters() if n.endswith(("query.weight", "q_proj.weight"))]  # transformers 4 / 5 names
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_diffusers_dit_every_site_rewritten():
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                            out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                            num_embeds_ada_norm=10)
    inputs = (torch.randn(2, 4, 8, 8),)
    kwargs = {"timestep": torch.tensor([10, 20]), "class_labels": torch.tensor([1, 2])}
    torch._dynamo.reset()
    report = explain(model.eval(), *inputs, **kwargs)
    assert report.counts == {"found": 2, "rewritten": 2, "skipped": 0}, str(report)
    assert [s.module_path for s in report.sites] == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    torch._dynamo.reset()
    before = _rewritten()
    out = torch.compile(model.eval(), backend=bitlower_eager_backend, fullgraph=True)(*inputs, **kwargs).sample
    assert _rewritten() - before == 2 and torch.isfinite(out).all()
