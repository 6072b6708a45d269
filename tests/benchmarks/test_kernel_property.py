"""``benchmarks/kernel_property.py`` end to end on CPU (``--device cpu``: the reference on both sides).

The GPU run is the issue-20 property test; this checks the script itself: random cases built in every
layout, one worker process per batch, float64 golden and term-scale bounds computed, jsonl and md written.
The parent (its ``main``) runs in this process; each batch is a fresh worker process of the script.
"""
import json

import pytest


@pytest.fixture(scope="module")
def kernel_property(load_script):
    return load_script("kernel_property")


def test_cpu_smoke_run_writes_rows_and_summary(kernel_property, tmp_path):
    assert kernel_property.main(["--device", "cpu", "--cases", "2", "--batch", "1", "--seed", "3",
                                 "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "kernel_property.jsonl").read_text().splitlines()]
    done = [r for r in rows if "started" not in r]
    assert [r["case"]["index"] for r in done] == [0, 1]
    for r in done:
        assert r["held"] and "out" in r["checks"] and r["plan"] == {"forward": "reference (CPU)"}
        assert all(err <= bound for err, bound in r["checks"].values())
    assert "cases run 2, held 2, failed 0, crashed 0" in (tmp_path / "kernel_property.md").read_text()
