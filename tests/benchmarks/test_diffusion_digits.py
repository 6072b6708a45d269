"""``benchmarks/diffusion_digits.py`` on CPU: two seeds in parallel workers, a few steps, and the time budget.

The driver (classifier, workers, table) runs in this process (its ``main``); each seed is a worker
process of the script, as on the GPU.
"""
import json
from pathlib import Path

import pytest

TINY = ["--device", "cpu", "--steps", "4", "--qat-steps", "2", "--batch-size", "16", "--samples-per-class", "2",
        "--sample-steps", "5", "--classifier-steps", "10"]
MODELS = ("full_precision", "fp_start", "post_training_binarized", "binary_qat_distilled")


@pytest.fixture(scope="module")
def diffusion_digits(load_script):
    return load_script("diffusion_digits")


def run(diffusion_digits, out: Path, *extra: str) -> int:
    return diffusion_digits.main([*TINY, "--out", str(out), *extra])


@pytest.mark.slow
def test_two_seeds_same_budget_table_and_grids(diffusion_digits, tmp_path):
    assert run(diffusion_digits, tmp_path, "--seeds", "0", "1", "--jobs", "2") == 0
    record = json.loads((tmp_path / "diffusion_digits.json").read_text())
    assert [seed["seed"] for seed in record["seeds"]] == [0, 1] and all(s["complete"] for s in record["seeds"])
    for seed in record["seeds"]:
        steps = {name: seed["models"][name]["steps"] for name in MODELS}
        assert steps == {"full_precision": 4, "fp_start": 2, "post_training_binarized": 2, "binary_qat_distilled": 4}
    for name in MODELS:
        for metric in ("denoising_mse", "frechet_distance", "sample_accuracy"):
            entry = record["summary"][name][metric]
            assert len(entry["values"]) == 2 and entry["std"] >= 0, (name, metric)
        for seed in (0, 1):
            png = (tmp_path / f"samples_{name}_seed{seed}.png").read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in png[-12:]
    seed0 = record["seeds"][0]["models"]
    assert seed0["binary_qat_distilled"]["denoising_mse"] != seed0["post_training_binarized"]["denoising_mse"]
    assert seed0["full_precision"]["denoising_mse"] != seed0["fp_start"]["denoising_mse"]  # the run continued
    assert not list(tmp_path.glob("seed_*/*/checkpoint.pt"))  # intermediates removed
    table = (tmp_path / "diffusion_digits.md").read_text()
    assert "2 FP + 2 QAT = 4" in table and " ± " in table


def test_budget_stops_workers_and_still_writes_the_table(diffusion_digits, tmp_path):
    assert run(diffusion_digits, tmp_path, "--seeds", "0", "--budget-s", "0.5") == 1
    record = json.loads((tmp_path / "diffusion_digits.json").read_text())
    assert "seed 0 stopped at the 0 s budget" in record["status"]
    assert "| full precision | 4 | — |" in (tmp_path / "diffusion_digits.md").read_text()
