"""``benchmarks/segmentation_digits.py`` on CPU: the smoke pipeline (table, ordering, PNG), workers, budget."""
from __future__ import annotations

import json

import pytest
import torch

METHODS = ["base", "sign_ste", "sign_stopgrad", "hamming"]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("segmentation_digits")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_smoke_in_process_writes_table_ordering_and_masks(bench, tmp_path):
    assert bench.main(["--smoke", "--seeds", "0", "1", "--methods", *METHODS, "--jobs", "0",
                       "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "segmentation_digits.json").read_text())
    assert sorted(record["summary"]) == sorted(METHODS)
    for method in METHODS:
        dice = record["summary"][method]["mean_dice"]
        assert len(dice["values"]) == 2 and 0.0 <= dice["mean"] <= 1.0 and dice["std"] >= 0
    assert set(record["ordering"]) == {"hamming ≈ base", "base > sign", "sign > stop-grad", "holds"}
    table = (tmp_path / "segmentation_digits.md").read_text()
    assert "| hamming |" in table and " ± " in table and "Seed ordering" in table
    png = (tmp_path / "masks_seed0.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in png[-12:]
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == ((2 + len(METHODS)) * (96 + 4), 4 * (96 + 4))  # image, truth, 4 predictions


def test_ordering_claims_by_hand(bench):
    def entry(mean, std):
        return {"mean_dice": {"values": [mean, mean], "mean": mean, "std": std}}

    summary = {"base": entry(0.60, 0.02), "hamming": entry(0.61, 0.02), "sign_ste": entry(0.55, 0.01),
               "sign_stopgrad": entry(0.50, 0.01)}
    assert bench.ordering(summary) == {"hamming ≈ base": True, "base > sign": True, "sign > stop-grad": True,
                                       "holds": True}
    summary["hamming"] = entry(0.50, 0.01)
    assert bench.ordering(summary)["hamming ≈ base"] is False and bench.ordering(summary)["holds"] is False


def test_budget_stops_the_workers_and_still_writes_the_table(bench, tmp_path):
    assert bench.main(["--smoke", "--seeds", "0", "--methods", "base", "hamming", "--jobs", "1", "--budget-s", "0",
                       "--out", str(tmp_path)]) == 1
    record = json.loads((tmp_path / "segmentation_digits.json").read_text())
    assert record["status"] == {"base_seed0": "stopped at the 0 s budget", "hamming_seed0": "not started (budget)"}
    assert "Unfinished: base_seed0 stopped" in (tmp_path / "segmentation_digits.md").read_text()
