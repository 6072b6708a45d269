"""The ``bitlower`` command end to end on tiny settings: demo, train + resume, explain, bench, errors."""
import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch

from bitlower.app.cli import attention_modules_without_sites, build_parser, main
from bitlower.app.cli_train import build_model
from bitlower.explain import explain
from bitlower.app.demo import cpu_threads
from bitlower.runtime import read_checkpoint

TINY_VIT = ["--model", "vit_tiny_patch8", "--image-size", "16", "--model-arg", "depth=1",
            "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2"]
SUBCOMMANDS = ("demo", "train", "export", "bench", "explain")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny models: one thread, restored afterwards (two threads on a busy 2-core machine stall)."""
    with cpu_threads(1):
        yield


def run_cli(*args, timeout=120):
    """``python -m bitlower.app.cli ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "bitlower.app.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_console_script_points_at_main():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("bitlower") == "bitlower.app.cli:main"


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--no-progress", "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    results = json.loads((out / "demo.json").read_text())
    assert set(results["phases"]) == {"full_precision", "post_training_binary", "qat_distilled"}
    for phase in results["phases"].values():
        assert 0.0 <= phase["accuracy"] <= 1.0
        assert phase["curves"]["accuracy"], "every phase has at least one evaluation"
    assert results["phases"]["full_precision"]["steps"] == 6
    assert results["phases"]["qat_distilled"]["steps"] == 4
    assert results["phases"]["qat_distilled"]["distill"]["kind"] == "hard"
    assert results["phases"]["post_training_binary"]["binarized_modules"] == 1
    (row,) = results["timing"]["rows"]
    assert row["shape"] == [8, 2, 17, 16] and row["sdpa_ms"] > 0 and row["binary_ms"] > 0
    assert "torch.compile" in row["binary_path"]
    png = (out / "demo_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    for text in ("full precision", "post-training", "QAT + hard distillation", "SDPA ms", "wall time"):
        assert text in printed.out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_lists_every_option_with_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
    assert "default" in text


def _train(out, *extra):
    return main(["train", *TINY_VIT, "--steps", "4", "--batch-size", "16", "--log-every", "1", "--no-progress",
                 "--device", "cpu", "--out", str(out), *extra])


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_stop_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    assert _train(tmp_path / "whole") == 0
    assert _train(tmp_path / "split", "--stop-after", "2") == 0
    assert [r["step"] for r in _records(tmp_path / "split") if r["split"] == "train"] == [1, 2]
    assert _train(tmp_path / "split", "--resume") == 0
    whole, split = _records(tmp_path / "whole"), _records(tmp_path / "split")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs if r["step"] != 2 or r["split"] != "eval"]
    assert strip(whole) == strip(split)
    assert "checkpoint" in capsys.readouterr().out


def test_train_full_precision_then_qat_from_init(tmp_path, capsys):
    assert _train(tmp_path / "fp", "--preset", "none") == 0
    assert _train(tmp_path / "qat", "--init", str(tmp_path / "fp" / "checkpoint.pt")) == 0
    extra = read_checkpoint(tmp_path / "qat" / "checkpoint.pt")["config"]["extra"]
    assert extra["init"] == str(tmp_path / "fp" / "checkpoint.pt") and extra["binarize"]["bias"] == "relpos"
    records = _records(tmp_path / "qat")
    assert all(r["distill_loss"] > 0 for r in records if r["split"] == "train"), "--init + preset distills"
    out = capsys.readouterr().out
    assert "binary_attention" in out and "accuracy" in out


def test_train_on_an_image_folder_with_a_val_split(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for label, color in enumerate(((255, 0, 0), (0, 0, 255))):
            folder = tmp_path / "data" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(3 if split == "train" else 2):
                Image.new("RGB", (12, 12), tuple(c // (i + 1) for c in color)).save(folder / f"{i}.png")
    code = main(["train", *TINY_VIT, "--data", f"imagefolder:{tmp_path / 'data'}", "--steps", "2",
                 "--batch-size", "4", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 0
    (final,) = [r for r in _records(tmp_path / "run") if r["split"] == "eval"]
    assert (4 * final["accuracy"]).is_integer(), "evaluated on the 4 images of val/, not the 6 of train/"
    assert "classification" in capsys.readouterr().out


def test_train_diffusion_dit(tmp_path, capsys):
    code = main(["train", "--model", "dit_s_4", "--image-size", "8", "--model-arg", "depth=1",
                 "--model-arg", "hidden_size=32", "--model-arg", "num_heads=2", "--steps", "2",
                 "--batch-size", "8", "--no-progress", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    assert "diffusion dit_s_4" in capsys.readouterr().out
    assert any("eval_mse" in r for r in _records(tmp_path))


def test_explain_lists_sites_and_reasons(capsys):
    assert main(["explain", *TINY_VIT[:4], "--model-arg", "depth=2"]) == 0
    text = capsys.readouterr().out
    assert "blocks.0.attn" in text and "blocks.1.attn" in text
    assert "rewritten 2, skipped 0" in text and "not found" not in text
    assert main(["explain", *TINY_VIT[:4], "--model-arg", "depth=2", "--option", "min_seq_len=64"]) == 0
    text = capsys.readouterr().out
    assert "rewritten 0, skipped 2" in text
    assert text.count("short_sequence") == 2


def test_attention_modules_the_trace_did_not_find_are_listed():
    class GatedAttention(torch.nn.Module):  # attention by name, but no softmax(q kᵀ) v inside
        def forward(self, x):
            return x * torch.sigmoid(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.real = build_model("vit_tiny_patch8", [("img_size", 8), ("depth", 1)])
            self.gate = GatedAttention()

        def forward(self, x):
            return self.gate(self.real(x))

    model = Net().eval()
    report = explain(model, torch.randn(1, 3, 8, 8))
    assert [s.module_path for s in report.sites] == ["real.blocks.0.attn"]
    assert attention_modules_without_sites(model, report.sites) == [("gate", "GatedAttention")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of bench")
def test_bench_without_gpu_says_so_and_times_cpu(capsys):
    assert main(["bench", "--shape", "1,2,16,16", "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert "needs a source checkout of bitlower and a CUDA GPU" in text
    assert "(1, 2, 16, 16)" in text and "torch.compile" in text


def test_unknown_model_one_line_error_in_subprocess():
    proc = run_cli("explain", "--model", "vit_tinyy_patch8")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("bitlower explain: error: unknown model 'vit_tinyy_patch8'")


@pytest.mark.parametrize("args, reason", [
    (["train", "--data", "/nonexistent/cifar"], "data path not found: /nonexistent/cifar"),
    (["train", "--data", "cifar10:/nonexistent/cifar"], "data path not found: /nonexistent/cifar"),
    (["train", "--preset", "binary_attentio"], "unknown preset 'binary_attentio'"),
    (["train", "--model", "nope"], "unknown model 'nope'"),
    (["train", "--resume", "/nonexistent/ck.pt"], "no checkpoint to resume from"),
    (["train", "--init", "/nonexistent/ck.pt", "--preset", "none"], "--init checkpoint not found"),
    (["explain", "--model-arg", "depthh=2"], "depthh"),
    (["explain", "--option", "min_seq_lenn=2"], "min_seq_lenn"),
])
def test_bad_arguments_exit_2_with_one_line(args, reason, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path)] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err, err


@pytest.mark.parametrize("args", [["train", "--steps", "many"], ["demo", "--device", "tpu"], ["frobnicate"], []])
def test_argparse_errors_are_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err, err
