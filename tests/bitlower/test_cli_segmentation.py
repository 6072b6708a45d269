"""``bitlower train --task segmentation`` end to end on tiny settings, its errors, and ``explain`` on the model."""
from __future__ import annotations

import json

import pytest
import torch

from bitlower.app.cli import main
from bitlower.runtime import read_checkpoint

TINY = ["--model", "seg_vit_tiny_patch8", "--data", "digits:8,4", "--image-size", "96",
        "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
        "--model-arg", "decoder_width=32", "--batch-size", "4", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _evals(folder):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "eval"]


def test_full_precision_then_qat_with_distillation_and_resume(tmp_path, capsys):
    fp = tmp_path / "fp"
    assert main(["train", *TINY, "--preset", "none", "--steps", "3", "--out", str(fp)]) == 0
    assert "segmentation seg_vit_tiny_patch8 (none)" in capsys.readouterr().out
    ev = _evals(fp)[-1]
    assert {"mean_dice", "miou", "pixel_accuracy", "dice_per_class"} <= set(ev) and len(ev["dice_per_class"]) == 11
    qat = ["train", *TINY, "--preset", "hamming", "--init", str(fp / "checkpoint.pt"), "--steps", "4",
           "--dice-weight", "0.5"]
    assert main([*qat, "--out", str(tmp_path / "whole")]) == 0
    assert main([*qat, "--out", str(tmp_path / "split"), "--stop-after", "2"]) == 0
    assert main([*qat, "--out", str(tmp_path / "split"), "--resume"]) == 0
    whole = read_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    split = read_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert whole["config"]["task"]["kind"] == "hard"  # --init + preset: distilled from the full-precision model
    for key, value in whole["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert _evals(tmp_path / "whole")[-1]["mean_dice"] == _evals(tmp_path / "split")[-1]["mean_dice"]


@pytest.mark.parametrize("args,reason", [
    (["--task", "segmentation", "--model", "vit_tiny_patch8"], "needs a seg_\\* model"),
    (["--task", "classification", "--model", "seg_vit_tiny_patch8"], "does not fit model"),
    (["--model", "seg_vit_tiny_patch8", "--data", "/nonexistent/seg"], "unknown segmentation data"),
    (["--model", "seg_vit_tiny_patch8", "--encoder-init", "/nonexistent.pt"], "--encoder-init checkpoint not found"),
])
def test_bad_arguments_exit_2_with_one_line(args, reason, capsys, tmp_path):
    assert main(["train", *args, "--out", str(tmp_path), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert pytest.importorskip("re").search(reason, err), err


def test_encoder_init_from_a_timm_state_dict(tmp_path, capsys):
    from bitlower.models import seg_vit

    donor = seg_vit("tiny", img_size=64, in_chans=1, num_classes=2, depth=1, embed_dim=32, num_heads=2,
                    decoder_width=32)
    torch.save(donor.encoder.state_dict(), tmp_path / "vit.pt")  # timm names, a 8x8 grid resampled to 12x12
    out = tmp_path / "run"
    assert main(["train", *TINY, "--preset", "none", "--steps", "1", "--encoder-init", str(tmp_path / "vit.pt"),
                 "--reinit", "attention", "--out", str(out)]) == 0
    state = read_checkpoint(out / "checkpoint.pt")["model"]
    assert state["encoder.pos_embed"].shape == (1, 1 + 144, 32)


def test_explain_rewrites_every_encoder_attention(capsys):
    assert main(["explain", "--model", "seg_vit_tiny_patch8", "--image-size", "32", "--model-arg", "depth=2",
                 "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2", "--model-arg", "decoder_width=32",
                 "--model-arg", "value_reduction=2"]) == 0
    out = capsys.readouterr().out
    assert "encoder.blocks.0.attn" in out and "encoder.blocks.1.attn" in out
    assert "found 2, rewritten 2, skipped 0" in out and "graph breaks 0" in out


def test_train_on_an_ade20k_style_folder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for kind in ("images", "annotations"):
            (tmp_path / "ade" / kind / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(
                tmp_path / "ade" / "images" / split / f"ADE_{i}.jpg")
            mask = rng.integers(0, 4, (20, 18), dtype=np.uint8)
            mask[0, 0] = 3  # labels 1..3 become 0..2 with --reduce-zero-label; 0 is ignored
            Image.fromarray(mask).save(tmp_path / "ade" / "annotations" / split / f"ADE_{i}.png")
    args = ["train", *TINY[:2], "--data", f"folder:{tmp_path / 'ade'}", "--image-size", "16", *TINY[6:],
            "--reduce-zero-label", "--preset", "sign_ste", "--steps", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    ev = _evals(tmp_path / "run")[-1]
    assert len(ev["dice_per_class"]) == 3  # 3 classes, no background left out of mean_dice
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["config"]["task"]["background"] is None and state["config"]["task"]["ignore_index"] == 255
