"""benchmarks/hopper_profile.py on the CPU: the byte counts behind its bandwidth rows."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hopper_profile as hp  # noqa: E402


def test_copy_and_stats_bytes():
    q, k = torch.empty(2, 3, 10, 72, dtype=torch.bfloat16), torch.empty(2, 3, 10, 72, dtype=torch.bfloat16)
    assert hp.moved_bytes("copy_qk", q, k) == 2 * 2 * 2 * 3 * 10 * 72 * 2  # read and write q and k
    assert hp.moved_bytes("stats", q, k) == 2 * 2 * 3 * 10 * 72 * 2 + 2 * 2 * 3 * 10 * 128  # + float8 signs, DP 128
    assert hp.moved_bytes("gluon", q, k) is None
