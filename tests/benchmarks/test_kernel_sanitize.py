"""benchmarks/kernel_sanitize.py on the CPU: its grid is plan-accepted on sm_90, its parser reads the sanitizer."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kernel_sanitize as ks  # noqa: E402

from bitlower.codegen.plan import CallFacts, DeviceFacts, KernelOptions, plan_backward, plan_forward  # noqa: E402
from bitlower.spec import CallSpec  # noqa: E402

SM90 = DeviceFacts(cuda=True, capability=(9, 0))


def test_every_case_is_a_fused_call_on_sm90():
    grid = ks.cases()
    assert len({ks._name(c) for c in grid}) == len(grid)  # names identify rows
    for case in grid:
        q = torch.empty(case["B"], case["H"], case["N"], case["D"], dtype=torch.bfloat16)
        k = torch.empty(case["B"], case["H"], case["M"], case["D"], dtype=torch.bfloat16)
        v = torch.empty(case["B"], case["H"], case["M"], case["Dv"], dtype=torch.bfloat16)
        bias = torch.empty(1, 1, case["N"], case["M"]) if case["bias_kind"] == "dense" else None
        spec = CallSpec(scale=1.0, weighting=case["weighting"], bias_kind=case["bias_kind"],
                        grad_mode=case["grad_mode"])
        options = KernelOptions(**case.get("options", {}))
        fwd = plan_forward(CallFacts.of(q, k, v, bias), spec, SM90, options)
        bwd = plan_backward(CallFacts.of(q, k, v, bias), spec, SM90, options)
        assert not isinstance(fwd, str) and not isinstance(bwd, str), (ks._name(case), fwd, bwd)
        if case.get("options", {}).get("forward"):
            assert fwd.kernel == case["options"]["forward"]


SANITIZER_TEXT = """LAUNCH _stats_kernel
LAUNCH _binary_attn_fwd_kernel
========= Out-of-range shared or local address
=========     at _binary_attn_fwd_kernel+0xea0 in forward_tiles.py:43
=========     by thread (4,0,0) in block (0,0,0)
========= Out-of-range shared or local address
=========     at _binary_attn_fwd_kernel+0xea0 in forward_tiles.py:43
========= ERROR SUMMARY: 2 errors
"""


def test_parser_counts_errors_per_kernel_and_line(tmp_path, monkeypatch):
    class Done:
        returncode, stdout, stderr = 0, SANITIZER_TEXT, ""

    monkeypatch.setattr(ks.subprocess, "run", lambda *a, **k: Done())
    row = ks.run_case(dict(ks.cases()[0]), tmp_path, "memcheck")
    assert row["errors"] == {"Out-of-range shared or local address at _binary_attn_fwd_kernel (forward_tiles.py:43)": 2}
    assert row["error_count"] == 2 and row["last_launch"] == "_binary_attn_fwd_kernel"
    assert "Out-of-range" in ks.table([row])
