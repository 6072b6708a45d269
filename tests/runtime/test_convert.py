"""convert_: identical outputs, frozen parts, deterministic bilinear planes, fullgraph compile."""
import pytest
import torch

import bitlower
from bitlower.models import vit_tiny
from bitlower.runtime import attention_cores, binarize_, convert_, preset
from bitlower.weighting import stratified_planes


def trained_like(name, depth=2):
    torch.manual_seed(0)
    model = vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=depth, num_classes=10, embed_dim=32, num_heads=2)
    binarize_(model, preset(name))
    with torch.no_grad():  # move the learned parts off their init, as training would
        for core in attention_cores(model).values():
            for p in core.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["binary_attention", "hamming_g", "hamming_b"])
def test_convert_keeps_outputs_and_freezes(name):
    model = trained_like(name).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    convert_(model)
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    assert all(core.converted for core in attention_cores(model).values())
    with torch.no_grad():
        assert torch.equal(model(x), before)
        assert torch.equal(model(x), before)  # deterministic: no sampling left


def test_bilinear_samples_in_training_only():
    model = trained_like("hamming_b")
    x = torch.randn(2, 1, 8, 8)
    assert not torch.equal(model(x), model(x))  # Bernoulli planes while training
    model.eval()
    assert torch.equal(model(x), model(x))


def test_stratified_planes_weights():
    x = torch.tensor([[[[0.0, 3.0, -3.0, 0.4] * 2]]])  # (1, 1, 1, 8)
    planes, weights = stratified_planes(x)
    p = (4 * torch.tanh(x / 2) / 2 + 0.5).clamp(0, 1)
    assert torch.equal(planes[..., 0, :], torch.where(p > 0.25, 1.0, -1.0))
    assert torch.equal(planes[..., 1, :], torch.where(p > 0.75, 1.0, -1.0))
    assert torch.allclose(weights.sum(-1), torch.ones(1, 1, 1))


def test_converted_model_compiles_fullgraph():
    model = convert_(trained_like("binary_attention", depth=1))  # one block: compile time is most of this test
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend="inductor", fullgraph=True)(x)
    # Inductor reorders float32 sums of the reference (bias gather, softmax, P·V): a few ulps.
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_convert_needs_binarized_model():
    with pytest.raises(ValueError, match="binarize_"):
        convert_(torch.nn.Linear(2, 2))
