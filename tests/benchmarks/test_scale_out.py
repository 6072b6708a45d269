"""``benchmarks/scale_out.py`` on CPU: the driver launches 1 and 2 gloo processes through torchrun.

The driver runs in this process (its ``main``); every run it launches is a ``torchrun`` of the script's
``--worker`` mode in fresh processes, as on the GPUs.
"""
import json
import logging
import math
from pathlib import Path

import pytest

STEPS = 12


@pytest.fixture(scope="module")
def scale_out(load_script):
    return load_script("scale_out")


def run_driver(scale_out, out: Path, *extra: str) -> int:
    return scale_out.main(["--device", "cpu", "--out", str(out), *extra])


def test_one_and_two_processes_give_curves_and_efficiency(scale_out, tmp_path):
    assert run_driver(scale_out, tmp_path, "--steps", str(STEPS), "--warmup", "2", "--window", "3") == 0
    record = json.loads((tmp_path / "scale_out.json").read_text())
    runs = record["runs"]
    assert sorted(runs) == ["1gpu", "1gpu_noise", "2gpu"]
    assert [runs[name]["world_size"] for name in ("1gpu", "1gpu_noise", "2gpu")] == [1, 1, 2]
    assert runs["2gpu"]["batch_per_process"] * 2 == runs["1gpu"]["batch_per_process"]
    for name, run in runs.items():
        curve = [json.loads(line) for line in (tmp_path / name / "curve.jsonl").read_text().splitlines()]
        assert [r["step"] for r in curve] == list(range(1, STEPS + 1)), name
        assert [r["loss"] for r in curve] == run["losses"], name
        assert all(math.isfinite(v) and 0 < v < 10 for v in run["losses"]), (name, run["losses"])
    # Same initial weights and data, other noise draws: the runs are not copies of each other.
    assert runs["2gpu"]["losses"] != runs["1gpu"]["losses"] != runs["1gpu_noise"]["losses"]
    efficiency = record["efficiency"]
    assert isinstance(efficiency, float) and math.isfinite(efficiency) and efficiency > 0
    assert record["distance_1_vs_1_noise"] > 0 and math.isfinite(record["ratio"])
    table = (tmp_path / "scale_out.md").read_text()
    assert "Scaling efficiency" in table and f"{efficiency:.3f}" in table


def test_a_failing_run_is_reported(scale_out, tmp_path, caplog):
    # 3 heads do not divide width 64: every worker fails while building the model.
    with caplog.at_level(logging.INFO, logger="scale_out"):
        assert run_driver(scale_out, tmp_path, "--steps", "4", "--warmup", "1", "--model-arg", "num_heads=3") == 1
    assert "1gpu failed" in caplog.text and "num_heads=3 must divide" in caplog.text
    assert not (tmp_path / "2gpu").exists()  # the scaled run is not started after a failed baseline
    assert json.loads((tmp_path / "scale_out.json").read_text())["status"]["1gpu"].startswith("failed")
