"""``benchmarks/e2e_speed.py`` end to end in its tiny CPU mode: one inference row, one training row.

The script is not a package module, so it runs as a fresh ``python benchmarks/e2e_speed.py``
process, as on the H100; the test reads back the jsonl, md and png it writes.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e_speed.py"
ROWS = ["infer:vit_s16_224", "train:vit_s8_320:hamming"]


def test_tiny_cpu_rows_write_table_plot_and_jsonl(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--rows", *ROWS,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
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


def test_kernel_options_reach_the_bitlower_rows_and_bad_ones_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--rows", ROWS[0],
                           "--kernel-options", "forward=v1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, row = [json.loads(line) for line in (tmp_path / "e2e_speed_rows_tiny.jsonl").read_text().splitlines()]
    assert row["bitlower"]["options"] == {"kernel_options": "forward=v1"} and row["inductor"]["options"] is None
    bad = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--rows", ROWS[0],
                          "--kernel-options", "forward=cudnn"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "forward must be one of" in bad.stderr
