"""``benchmarks/kernel_property.py`` end to end on CPU (``--device cpu``: the reference on both sides).

The GPU run is the issue-20 property test; this checks the script itself: random cases built in every
layout, one worker process per batch, float64 golden and term-scale bounds computed, jsonl and md written.
"""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_property.py"


def test_cpu_smoke_run_writes_rows_and_summary(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--cases", "2", "--batch", "1",
                           "--seed", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "kernel_property.jsonl").read_text().splitlines()]
    done = [r for r in rows if "started" not in r]
    assert [r["case"]["index"] for r in done] == [0, 1]
    for r in done:
        assert r["held"] and "out" in r["checks"] and r["plan"] == {"forward": "reference (CPU)"}
        assert all(err <= bound for err, bound in r["checks"].values())
    assert "cases run 2, held 2, failed 0, crashed 0" in (tmp_path / "kernel_property.md").read_text()
