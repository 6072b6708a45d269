"""Third-party models through the adapter registry: Hugging Face ViT/DeiT/Dinov2 classifiers and
diffusers' DiTTransformer2DModel train (QAT + distillation), evaluate and resume exactly."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bitlower.runtime import (DistillConfig, TrainConfig, binarize_, preset, train_classifier, train_diffusion)
from bitlower.runtime.adapters import (PLAIN, ModelAdapter, find_adapter, register_adapter, unregister_adapter)

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

HF_TINY = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=64, num_labels=4)


def hf_classifier(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "vit":
        return transformers.ViTForImageClassification(transformers.ViTConfig(**HF_TINY))
    if kind == "deit":
        return transformers.DeiTForImageClassification(transformers.DeiTConfig(**HF_TINY))
    return transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**HF_TINY))


def tiny_dit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=1,
                                           out_channels=2, num_layers=1, sample_size=8, patch_size=2,
                                           num_embeds_ada_norm=4, norm_num_groups=1)


def images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()  # 4 classes a model can learn
    return TensorDataset(x, y)


def config(tmp_path=None, steps=4, **kw):
    return TrainConfig(steps=steps, batch_size=16, lr=1e-3, progress=False, log_every=1,
                       out_dir=None if tmp_path is None else str(tmp_path), **kw)


@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2"])
def test_hf_classifier_qat_distilled(kind):
    model = hf_classifier(kind)
    assert find_adapter(model).name == "transformers.ImageClassification"
    report = binarize_(model, preset("binary_attention"))  # relpos: the grid comes from model.config
    assert len(report.binarized) == 1 and not report.unhandled
    before = model.state_dict()["classifier.weight"].clone()
    result = train_classifier(model, images(), config(), teacher=report.teacher, distill=DistillConfig("hard"),
                              eval_set=images(16, seed=1))
    assert 0.0 <= result["accuracy"] <= 1.0 and result["step"] == 4
    assert not torch.equal(before, model.state_dict()["classifier.weight"])


def test_wrapped_hf_model_finds_its_grid():
    """A user's wrapper around an HF model: the handler reads the grid off the wrapped model's config."""
    wrapper = nn.Sequential(hf_classifier("vit"))
    report = binarize_(wrapper, preset("binary_attention"))
    core = next(m for m in wrapper.modules() if type(m).__name__ == "BinaryAttentionCore")
    assert len(report.binarized) == 1 and core.geometry.grid == (4, 4, 1)


def test_diffusers_dit_trains_and_restores_label_dropout():
    model = tiny_dit()
    embedders = find_adapter(model).label_dropout_modules(model)
    assert embedders and all(m.dropout_prob == 0.1 for m in embedders)  # diffusers' default
    report = binarize_(model, preset("binary_attention"))
    assert len(report.binarized) == 1
    result = train_diffusion(model, images(), config(), teacher=report.teacher, eval_set=images(16, seed=1))
    assert result["eval_mse"] > 0 and result["step"] == 4
    assert all(m.dropout_prob == 0.1 for m in embedders)


def test_hf_resume_is_exact(tmp_path):
    def run(folder, stop_at=None, resume=None):
        model = hf_classifier("vit")
        binarize_(model, preset("binary_attention", keep_teacher=False))
        train_classifier(model, images(), config(folder, steps=4), stop_at=stop_at, resume=resume)
        return model.state_dict()

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_at=2)
    resumed = run(tmp_path / "b", resume="auto")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_user_adapter_is_used_and_removable():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 4)

        def forward(self, x):
            return {"out": self.lin(x.flatten(1))}

    register_adapter(DictNet, ModelAdapter("dictnet", classify=lambda m, x: m(x)["out"]))
    try:
        result = train_classifier(DictNet(), images(), config(), eval_set=images(16))
        assert result["step"] == 4
        with pytest.raises(ValueError, match="already has an adapter"):
            register_adapter(DictNet, ModelAdapter("again"))
    finally:
        unregister_adapter(DictNet)
    assert find_adapter(DictNet()) is PLAIN
