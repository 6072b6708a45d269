"""``bitlower.demo``: phases, determinism, curves, report and timing rows, on quick settings in process."""
import copy
import json

import pytest
import torch

from bitlower.app.demo import DemoConfig, build_model, cpu_threads, digits_splits, post_training_binary, read_curves, run_demo
from bitlower.app.demo_report import format_summary, plot_curves
from bitlower.app.demo_timing import TimingRow, describe_measurement, format_timing, time_attention
from bitlower.runtime import attention_cores, binarize_, preset

NO_TIMING = dict(timing_shapes=(), progress=False, device="cpu")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny models: one thread, restored afterwards (two threads on a busy 2-core machine stall)."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    with cpu_threads(1):
        return run_demo(DemoConfig.quick(**NO_TIMING), out), out


def test_quick_demo_is_deterministic(quick_results, tmp_path):
    first, _ = quick_results
    second = run_demo(DemoConfig.quick(**NO_TIMING), tmp_path)
    for name, phase in first["phases"].items():
        assert phase["accuracy"] == second["phases"][name]["accuracy"], name
        assert phase["curves"] == second["phases"][name]["curves"], name


def test_rerun_into_the_same_folder_replaces_the_curves(quick_results):
    results, out = quick_results
    again = run_demo(DemoConfig.quick(**NO_TIMING), out)
    steps = [s for s, _ in again["phases"]["full_precision"]["curves"]["train_loss"]]
    assert steps == list(range(1, 7)), "metrics of the earlier run were appended to"
    assert json.loads((out / "demo.json").read_text())["phases"]["full_precision"]["curves"] == \
        results["phases"]["full_precision"]["curves"]


def test_curves_follow_the_eval_schedule(quick_results):
    results, _ = quick_results
    phases = results["phases"]
    assert [s for s, _ in phases["full_precision"]["curves"]["accuracy"]] == [0, 3, 6]
    assert [s for s, _ in phases["qat_distilled"]["curves"]["accuracy"]] == [0, 3, 4]
    assert phases["full_precision"]["accuracy"] == phases["full_precision"]["curves"]["accuracy"][-1][1]
    assert phases["post_training_binary"]["steps"] == 0
    assert phases["qat_distilled"]["learned_parameters_added"] > 0  # the relative-position tables


def test_post_training_binary_leaves_the_trained_model_alone():
    config = DemoConfig.quick(**NO_TIMING)
    model = build_model(config)
    _, test = digits_splits(config.image_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = post_training_binary(model, test, config)
    assert result["binarized_modules"] == config.depth
    assert not attention_cores(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["config"]["attention"]["weighting"] == "mean_abs" and result["config"]["bias"] == "none"


def test_post_training_binary_changes_the_predictions():
    """The binarized copy is evaluated with binary attention, so its logits differ from the model's."""
    config = DemoConfig.quick(**NO_TIMING, depth=2)
    model = build_model(config).eval()
    with torch.no_grad():  # at init (std 0.02) softmax is near uniform either way; sharpen the scores
        for block in model.blocks:
            block.attn.qkv.weight.mul_(30.0)
    _, test = digits_splits(config.image_size)
    images = test.tensors[0][:64]
    with torch.no_grad():
        fp_logits = model(images)
    student = copy.deepcopy(model)
    binarize_(student, preset("binary_attention", bias="none", keep_teacher=False))
    with torch.no_grad():
        assert not torch.allclose(student(images), fp_logits, atol=1e-3)


def test_config_validation():
    with pytest.raises(ValueError, match="patch_size"):
        DemoConfig(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="positive"):
        DemoConfig(fp_steps=0)
    with pytest.raises(ValueError, match="kind"):
        DemoConfig(distill="medium")


def test_read_curves_of_a_missing_run_is_empty(tmp_path):
    assert read_curves(tmp_path) == {"train_loss": [], "accuracy": []}


def test_summary_and_plot(quick_results, tmp_path):
    results, _ = quick_results
    results = {**results, "timing": {"measured": "CPU test", "rows": [
        TimingRow((1, 2, 16, 16), "float32", 2.0, 8.0, "exact reference").to_dict()]}}
    text = format_summary(results)
    lines = text.splitlines()
    assert any(line.startswith("full precision") for line in lines)
    assert any(line.startswith("binary, QAT + hard distillation") for line in lines)
    assert "0.25x" in text and "(1, 2, 16, 16)" in text
    png = plot_curves(results, tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_cpu_timing_row():
    (row,) = time_attention([(1, 2, 16, 16)], device="cpu", repeats=2)
    assert row.shape == (1, 2, 16, 16) and row.dtype == "float32"
    assert row.sdpa_ms > 0 and row.binary_ms > 0 and row.compile_s > 0
    assert row.speedup == pytest.approx(row.sdpa_ms / row.binary_ms)
    text = format_timing(describe_measurement(torch.device("cpu"), 2), [row.to_dict()])
    assert "median of 2 calls" in text and "not expected to beat SDPA" in text


def test_timing_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B, H, N, D"):
        time_attention([(1, 2, 16)], device="cpu")
