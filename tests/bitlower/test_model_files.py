"""bitlower.save / load / restore_: model.safetensors + bitlower.json round trips, bit-identical outputs,
the Hugging Face from_pretrained route, and clear errors for folders that do not fit."""
import json
import subprocess
import sys

import pytest
import torch

import bitlower
from bitlower.models import vit_tiny
from bitlower.runtime import binarize_, convert_, preset

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

HF_TINY = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=64, num_labels=4)


def _perturb(model):
    """Learned parts away from their init, so a load that drops them shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".binary." in name:
                p.add_(torch.randn_like(p))


def test_bitlower_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=2, num_classes=4, embed_dim=32, num_heads=2)
    binarize_(model, preset("hamming"), filter_fn=lambda n, m: not n.startswith("blocks.1"))
    binarize_(model, preset("binary_attention"), filter_fn=lambda n, m: n.startswith("blocks.1"))
    _perturb(model)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    bitlower.save(model, tmp_path)
    meta = json.loads((tmp_path / "bitlower.json").read_text())
    assert sorted(meta["binarized"]) == ["blocks.0.attn", "blocks.1.attn"] and meta["model"]["library"] == "bitlower"
    loaded = bitlower.load(tmp_path)
    assert not loaded.training
    assert torch.equal(model(x), loaded(x))


def test_converted_flag_survives(tmp_path):
    model = vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=1, num_classes=4, embed_dim=32, num_heads=2)
    binarize_(model, preset("hamming_b", keep_teacher=False))
    convert_(model)
    bitlower.save(model, tmp_path)
    loaded = bitlower.load(tmp_path)
    cores = bitlower.runtime.attention_cores(loaded)
    assert all(c.converted for c in cores.values()) and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_hf_vit_load_and_from_pretrained_route(tmp_path):
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**HF_TINY))
    binarize_(model, preset("binary_attention", keep_teacher=False))
    _perturb(model)
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    bitlower.save(model, tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert torch.equal(model(x).logits, bitlower.load(tmp_path)(x).logits)
    plain = transformers.ViTForImageClassification.from_pretrained(tmp_path)  # binary parts: unexpected keys
    assert not bitlower.runtime.attention_cores(plain)
    restored = bitlower.restore_(plain, tmp_path)
    assert torch.equal(model(x).logits, restored(x).logits)


def test_diffusers_dit_round_trip(tmp_path):
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=1,
                                            out_channels=2, num_layers=1, sample_size=8, patch_size=2,
                                            num_embeds_ada_norm=4, norm_num_groups=1)
    binarize_(model, preset("binary_attention", keep_teacher=False))
    _perturb(model)
    model.eval()
    args = (torch.randn(2, 1, 8, 8), torch.tensor([3, 500]), torch.tensor([0, 2]))
    bitlower.save(model, tmp_path)
    loaded = bitlower.load(tmp_path)
    assert torch.equal(model(*args).sample, loaded(*args).sample)


def test_fresh_process_gives_identical_outputs(tmp_path):
    """An HF ViT binarized and saved here; loaded in a new interpreter (both routes), same logits bit for bit."""
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**HF_TINY))
    binarize_(model, preset("binary_attention", keep_teacher=False))
    _perturb(model)
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    torch.save({"x": x, "y": model(x).logits.detach()}, tmp_path / "check.pt")
    bitlower.save(model, tmp_path / "m")
    code = ("import sys, torch, transformers, bitlower; d = sys.argv[1]; c = torch.load(d + '/check.pt'); "
            "a = bitlower.load(d + '/m'); "
            "b = bitlower.restore_(transformers.ViTForImageClassification.from_pretrained(d + '/m'), d + '/m'); "
            "print(torch.equal(a(c['x']).logits, c['y']), torch.equal(b(c['x']).logits, c['y']))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("True True"), out.stderr[-2000:]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="bitlower.json"):
        bitlower.load(tmp_path)
    model = vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=1, num_classes=4, embed_dim=32, num_heads=2)
    binarize_(model, preset("binary_attention", keep_teacher=False))
    bitlower.save(model, tmp_path)
    with pytest.raises(ValueError, match="binarized already"):
        bitlower.restore_(model, tmp_path)
    other = vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=1, num_classes=5, embed_dim=32, num_heads=2)
    with pytest.raises(RuntimeError):
        bitlower.load(tmp_path, model=other)  # head of 5 classes, weights of 4
    meta = json.loads((tmp_path / "bitlower.json").read_text())
    meta["model"]["class"] = "os.system"
    (tmp_path / "bitlower.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not from bitlower"):
        bitlower.load(tmp_path)
