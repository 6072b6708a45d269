"""``benchmarks/hopper_ablation.py`` on the CPU: each mode swaps what it names, and only that (the timing is GPU-only)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hopper_ablation as ha  # noqa: E402
from bitlower.codegen import stats  # noqa: E402
from bitlower.codegen.hopper import kernel_pingpong, kernel_sage  # noqa: E402

SWAPPED = {"noexp": ("exp2", ha._exp2_as_multiply), "nopv": ("_issue_pv", ha._issue_pv_skipped),
           "noqk": ("_issue_qk", ha._issue_qk_skipped)}


@pytest.fixture
def restored(monkeypatch):
    """Every global ``patch`` may set, put back after the test."""
    for name, _ in SWAPPED.values():
        monkeypatch.setattr(kernel_sage, name, getattr(kernel_sage, name))
    for name in ("_issue_pv", "_issue_qk"):
        monkeypatch.setattr(kernel_pingpong, name, getattr(kernel_pingpong, name))
    monkeypatch.setattr(stats, "PROLOGUE_ROWS", stats.PROLOGUE_ROWS)
    monkeypatch.setattr(stats, "PROLOGUE_WARPS", stats.PROLOGUE_WARPS)


@pytest.mark.parametrize("mode", ["noexp", "nopv", "noqk", "noexp+nopv"])
def test_loop_modes_swap_their_helpers_only(mode, restored):
    before = {name: getattr(kernel_sage, name) for name, _ in SWAPPED.values()}
    ha.patch(mode)
    for part, (name, stand_in) in SWAPPED.items():
        assert getattr(kernel_sage, name) is (stand_in if part in mode.split("+") else before[name])


def test_stats_modes_set_rows_and_warps(restored):
    ha.patch("stats_128x8")
    assert (stats.PROLOGUE_ROWS, stats.PROLOGUE_WARPS) == (128, 8)
    ha.patch("base")
    assert (stats.PROLOGUE_ROWS, stats.PROLOGUE_WARPS) == (128, 8)  # base changes nothing


def test_structure_b_takes_the_same_swaps(restored):
    ha.patch("nopv+noqk")
    assert kernel_pingpong._issue_pv is ha._issue_pv_ws_skipped and kernel_pingpong._issue_qk is ha._issue_qk_ws_skipped


def test_shapes_option_is_parsed_and_checked(capsys):
    """``--shapes`` takes B,H,N,D per shape (the GPU run at the small shapes); a malformed one is refused."""
    with pytest.raises(SystemExit) as bad:
        ha.main(["--shapes", "64,16,256", "--modes", "stats"])
    assert bad.value.code == 2 and "B,H,N,D" in capsys.readouterr().err
