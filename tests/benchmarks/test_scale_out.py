"""``benchmarks/scale_out.py`` on CPU: the driver launches 1 and 2 gloo processes through torchrun."""
import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_out.py"
STEPS = 12


def run_driver(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=240)


def test_one_and_two_processes_give_curves_and_efficiency(tmp_path):
    proc = run_driver(tmp_path, "--steps", str(STEPS), "--warmup", "2", "--window", "3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
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


def test_a_failing_run_is_reported(tmp_path):
    # 3 heads do not divide width 64: every worker fails while building the model.
    proc = run_driver(tmp_path, "--steps", "4", "--warmup", "1", "--model-arg", "num_heads=3")
    assert proc.returncode == 1
    assert "1gpu failed" in proc.stderr and "num_heads=3 must divide" in proc.stderr
    assert not (tmp_path / "2gpu").exists()  # the scaled run is not started after a failed baseline
    assert json.loads((tmp_path / "scale_out.json").read_text())["status"]["1gpu"].startswith("failed")
