"""``benchmarks/e2e_speed.py`` end to end in its tiny CPU mode: one inference row, one training row.

The script is not a package module, so each run is a fresh ``python benchmarks/e2e_speed.py``
process, as on the H100; the test reads back the jsonl, md and png it writes. The script runs a tiny
CPU row on one thread, so this file's two runs start together, one per core of a 2-core machine. A
refused option never gets past the argument parser, which runs in this process.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "e2e_speed.py"
ROWS = ["infer:vit_s16_224", "train:vit_s8_320:hamming"]
RUNS = {  # run name -> the script's arguments after --device cpu --tiny
    "rows": ["--rows", *ROWS],
    "kernel_options": ["--rows", ROWS[0], "--kernel-options", "forward=v1", "--cudagraphs"],
}


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every run of ``RUNS``, started at once: ``{name: (out folder, process)}``; output in ``std{out,err}.txt``."""
    runs = {}
    for name, args in RUNS.items():
        out = tmp_path_factory.mktemp(f"e2e_{name}") / "out"
        with open(out.parent / "stdout.txt", "w") as stdout, open(out.parent / "stderr.txt", "w") as stderr:
            proc = subprocess.Popen([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", *args, "--out", str(out)],
                                    stdout=stdout, stderr=stderr, text=True)
        runs[name] = (out, proc)
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:  # a test that did not get to wait for its run
            proc.kill()
            proc.wait()


def finished(started, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    """The run's output folder and its process, waited for."""
    out, proc = started[name]
    proc.wait(timeout=300)
    return out, subprocess.CompletedProcess(proc.args, proc.returncode, (out.parent / "stdout.txt").read_text(),
                                            (out.parent / "stderr.txt").read_text())


def test_tiny_cpu_rows_write_table_plot_and_jsonl(started):
    tmp_path, proc = finished(started, "rows")
    assert proc.returncode == 0, proc.stderr[-3000:]

    meta, *rows = [json.loads(line) for line in (tmp_path / "e2e_speed_rows_tiny.jsonl").read_text().splitlines()]
    assert meta["meta"]["tiny"] and meta["meta"]["command"].endswith(f"--out {tmp_path}")
    assert [r["row"] for r in rows] == ROWS
    for r in rows:
        assert "error" not in r, r
        assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert r["ratio"] == r["inductor"]["ms"] / r["bitlower"]["ms"]
        for backend in ("inductor", "bitlower"):
            res = r[backend]
            assert res["ms"] > 0 and math.isclose(res["images_per_s"], r["batch"] * 1e3 / res["ms"])
            assert res["first_call_s"] > 0 and res["graph_breaks"] == 0
        bit = r["bitlower"]
        assert bit["sites_rewritten"] == bit["attention_modules"] >= 1, bit
        assert bit["fallback"] == {} and bit["path"] == "reference (CPU)"
    infer, train = rows
    assert infer["bitlower"]["options"] is None and infer["grad_mode"] is None
    assert train["bitlower"]["options"] == {"grad_mode": "hamming"} and train["inductor"]["options"] is None

    md = (tmp_path / "e2e_speed_rows_tiny.md").read_text()
    assert "torch 2." in md and f"--rows {' '.join(ROWS)}" in md
    for kind, r in zip(("infer", "train"), rows):
        assert f"### {kind}" in md
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {r['model']} |") and
                    (kind == "infer" or "| hamming |" in ln))
        assert f"| {r['ratio']:.2f}x |" in line and f"| {r['bitlower']['ms']:.3f} |" in line
        assert "| 1 of 1 |" in line and "FALLBACK" not in line
    assert "### infer" in proc.stdout and "### train" in proc.stdout
    png = (tmp_path / "e2e_speed_rows_tiny.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000


@pytest.fixture(scope="module")
def e2e_speed(load_script):
    return load_script("e2e_speed")


def test_kernel_options_and_cudagraphs_reach_the_rows_and_bad_ones_are_refused(started, e2e_speed, capsys):
    tmp_path, proc = finished(started, "kernel_options")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "e2e_speed_rows_cudagraphs_tiny.jsonl").read_text().splitlines()
    _, row = [json.loads(line) for line in lines]
    assert row["bitlower"]["options"] == {"triton.cudagraphs": True, "kernel_options": "forward=v1"}
    assert row["inductor"]["options"] == {"triton.cudagraphs": True}
    with pytest.raises(SystemExit) as bad:
        e2e_speed.parse_args(["--device", "cpu", "--tiny", "--rows", ROWS[0], "--kernel-options", "forward=cudnn"])
    assert bad.value.code == 2 and "forward must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        e2e_speed.parse_args(["--device", "cpu", "--tiny", "--rows", ROWS[1], "--cudagraphs"])
    assert bad.value.code == 2 and "infer rows only" in capsys.readouterr().err
