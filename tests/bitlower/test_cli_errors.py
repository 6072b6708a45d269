"""Command-line hygiene (issues 18 and 19): one-line errors with exit status 2 and no traceback,
safe run folders, saved arguments, --resume from --out alone, --version, every default shown."""
import json
import os
import subprocess
import sys

import pytest
import torch

from bitlower.app.cli import main
from bitlower.app.demo import cpu_threads
from bitlower.app.train_tasks import TaskRun, TrainTask, get_train_task, register_train_task, task_names

TINY = ["--model", "vit_tiny_patch8", "--image-size", "16", "--model-arg", "depth=1",
        "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2", "--steps", "3", "--batch-size", "16",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    with cpu_threads(1):
        yield


def one_line_error(capsys, argv, reason):
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and reason in err, err


@pytest.mark.parametrize("argv, reason", [
    (["train", "--image-size", "0"], "must be >= 1"),
    (["train", "--eval-every", "-1"], "--eval-every: must be >= 0"),
    (["train", "--checkpoint-every", "-5"], "--checkpoint-every: must be >= 0"),
    (["train", "--steps", "0"], "--steps: must be >= 1"),
    (["demo", "--threads", "-2"], "--threads: must be >= 0"),
    (["bench", "--repeats", "0"], "--repeats: must be >= 1"),
    (["train", "--grad-clip", "big"], "expected a number or 'none'"),
])
def test_bad_numbers_are_argparse_errors(capsys, argv, reason):
    one_line_error(capsys, argv, reason)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "demo", "bench"])
def test_unavailable_device_is_one_line(capsys, command):
    one_line_error(capsys, [command, "--device", "cuda"], "cuda is not available here")


def test_bad_backend_model_arg_and_folders(capsys, tmp_path):
    one_line_error(capsys, ["train", *TINY, "--compile-backend", "nope", "--out", str(tmp_path / "a")],
                   "--compile-backend 'nope' is not a torch.compile backend")
    one_line_error(capsys, ["train", *TINY, "--model-arg", "depth=abc", "--out", str(tmp_path / "b")],
                   "depth=abc: not a Python literal")
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, ["train", *TINY, "--out", str(afile)], "is a file, not a folder")
    one_line_error(capsys, ["demo", "--quick", "--out", str(afile / "x")], "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(capsys, ["train", *TINY, "--out", str(locked / "run")], "cannot create the folder")
    finally:
        locked.chmod(0o700)


def test_non_empty_out_is_refused_and_resume_needs_only_out(capsys, tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--preset", "hamming", "--lr", "0.002", "--log-every", "1", "--out", str(out)]
    assert main(args + ["--stop-after", "2"]) == 0
    saved = json.loads((out / "run_args.json").read_text())
    assert saved["preset"] == "hamming" and saved["lr"] == 0.002 and "depth=1" in saved["model_arg"]
    capsys.readouterr()
    one_line_error(capsys, args, "is not empty")  # the same command again, without --resume
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records if '"train"' in r] == [1, 2]  # untouched
    assert main(["train", "--out", str(out), "--resume"]) == 0  # everything else from run_args.json
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert steps == [1, 2, 3]


def test_resume_accepts_model_args_in_another_order(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--stop-after", "1"]) == 0
    swapped = ["--model", "vit_tiny_patch8", "--image-size", "16", "--model-arg", "num_heads=2",
               "--model-arg", "embed_dim=32", "--model-arg", "depth=1"]
    assert main(["train", *swapped, "--out", str(out), "--resume"]) == 0


def test_last_step_is_logged(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "5", "--log-every", "2", "--out", str(out)]) == 0
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert steps == [2, 4, 5]


def test_version_and_zero_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("bitlower 0.")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(0: at the end only) (default: 0)" in text and "linear warmup steps (default: 0)" in text
    assert "(default: 0.0005)" in text  # TrainConfig's lr: one set of defaults


def test_progress_lines_off_a_terminal(tmp_path):
    """stdout and stderr are pipes here: no tqdm redraws (carriage returns), one line per logged step."""
    cmd = [sys.executable, "-m", "bitlower.app.cli", "train", *[a for a in TINY if a != "--no-progress"],
           "--log-every", "1", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert [line for line in proc.stderr.splitlines() if line.startswith("classification step")] == [
        line for line in proc.stderr.splitlines() if "step" in line and "loss" in line]
    assert sum(line.startswith("classification step") for line in proc.stderr.splitlines()) == 3


def test_a_registered_task_is_chosen_with_task(tmp_path, capsys):
    calls = []

    def run(r: TaskRun) -> dict:
        calls.append((type(r.model).__name__, len(r.train_set), r.config.steps))
        return {"step": r.config.steps}

    register_train_task(TrainTask("probe", "records its call", run))
    assert "probe" in task_names() and get_train_task("probe").run is run
    assert main(["train", *TINY, "--task", "probe", "--preset", "none", "--out", str(tmp_path / "p")]) == 0
    assert calls == [("VisionTransformer", 1437, 3)]
    with pytest.raises(ValueError, match="already registered"):
        register_train_task(TrainTask("probe", "again", run))
    one_line_error(capsys, ["train", *TINY, "--task", "nope", "--out", str(tmp_path / "q")], "unknown task 'nope'")


def test_export_writes_the_trained_weights_only(tmp_path, capsys):
    import bitlower
    from bitlower.runtime import attention_cores, read_checkpoint

    out = tmp_path / "run"
    assert main(["train", *TINY, "--ema-decay", "0.5", "--out", str(out)]) == 0
    assert main(["export", "--out", str(out)]) == 0
    assert main(["export", "--out", str(out), "--ema", "--to", str(tmp_path / "ema")]) == 0
    state = read_checkpoint(out / "checkpoint.pt")
    for folder, weights in ((out / "export", state["model"]), (tmp_path / "ema", state["ema"]["shadow"])):
        assert sorted(p.name for p in folder.iterdir()) == ["bitlower.json", "model.safetensors"]
        model = bitlower.load(folder)
        assert len(attention_cores(model)) == 1
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert not torch.equal(state["model"]["head.weight"], state["ema"]["shadow"]["head.weight"])
    capsys.readouterr()
    one_line_error(capsys, ["export", "--out", str(tmp_path / "nothing")], "no checkpoint in --out")


def test_init_whose_model_entry_is_not_a_state_dict_is_one_line(tmp_path, capsys):
    """Issue 19 item 5: was `TypeError: Expected state_dict to be dict-like` with a traceback."""
    from bitlower.runtime.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "bad.pt", {"model": [1, 2]})
    one_line_error(capsys, ["train", *TINY, "--init", str(path), "--out", str(tmp_path / "run")],
                   "does not fit this full-precision model: model: expected a state dict, got list")
