"""Which kernel launches of bitlower's CUDA path touch memory they should not (compute-sanitizer, one GPU call).

Question: for a fixed grid of small, awkward calls that the kernel plan can choose (head dims whose
padded width is 32, one token, Dv != D, dense bias, static and online softmax, both tl.dot option sets,
tile alternatives), does each call's forward + backward run clean under ``compute-sanitizer``, and if
not, which kernel, at which source line, with which error?

Each case runs alone in a process (``kernel_property.worker``: the call through
``bitlower.binary_attention``, its gradients, the float64 verdict), ``--jobs`` processes at a time. In
the child every Triton launch is synchronised and its kernel name printed first (``--sync``), so a case
that faults names the faulting kernel even without the sanitizer. The sanitizer's first lines per error
kind (kind, kernel+offset, source line) are kept; the table has one row per case.

Usage: ``python benchmarks/kernel_sanitize.py --out $OUT`` (memcheck; ``--tool racecheck`` or
``initcheck`` for the other checkers; ``--no-sanitizer`` for the synchronised launches alone).
The plan pads D 17-32 to 64 channels since session 7; ``min_width=32`` rows run the 32-channel tiles
that session 7 (H200, Triton 3.6) found faulty: the v1 forward at D 24 (padded 32) with 128x32 tiles and the static
bound, "Out-of-range shared or local address" at the Q.K^T dot (``forward_tiles.py:43``, 34 errors);
the query-side backward at D 32 with a dense bias, at a reduction (``standard.py:263``, 49 errors);
the v2 forward at D 128, Dv 32, one token: NaN outputs with no memcheck or initcheck error.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import write_report

BASE = dict(seed=0, B=1, H=1, layout="contiguous", bias_kind="none", grid=None, magnitude=1.0, dtype="bfloat16",
            weighting="mean_abs", grad_mode="ste", scale=None)


def cases() -> list[dict]:
    """The grid: each call once with the plan's own choice, then with the overrides named in ``options``."""
    grid = []
    for n in (1, 5, 256):
        for dim, dim_v in ((24, 64), (32, 64), (32, 32), (128, 32), (64, 64)):
            for bias in ("none", "dense"):
                for grad in ("ste", "hamming"):
                    grid.append(dict(BASE, B=3 if n > 1 else 2, N=n, M=n, D=dim, Dv=dim_v, bias_kind=bias,
                                     grad_mode=grad))
    overrides = [dict(min_width=32), dict(min_width=32, forward="v1", static_max=False),
                 dict(min_width=32, forward="v1", forward_tiles="64x32x4x2"),
                 dict(min_width=32, forward="v1", forward_tiles="128x64x4x3"), dict(min_width=32, forward="v2"),
                 dict(min_width=32, backward_tiles="64x64x4x1"), dict(forward="v1", static_max=False)]
    for dim, dim_v in ((24, 64), (32, 64), (128, 32)):
        for n in (1, 256):
            for options in overrides:
                grid.append(dict(BASE, B=2, N=n, M=n, D=dim, Dv=dim_v, bias_kind="dense", options=options))
    return [dict(case, index=i) for i, case in enumerate(grid)]


def _name(case: dict) -> str:
    opts = ",".join(f"{k}={v}" for k, v in case.get("options", {}).items())
    return (f"N{case['N']} D{case['D']} Dv{case['Dv']} {case['bias_kind']} {case['grad_mode']}"
            + (f" [{opts}]" if opts else ""))


def sync_launches() -> None:
    """Every Triton launch in this process is synchronised and named on stdout before it runs."""
    import torch
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def named_run(self, *args, **kwargs):
        print(f"LAUNCH {self.__name__}", flush=True)
        result = run(self, *args, **kwargs)
        torch.cuda.synchronize()
        return result

    JITFunction.run = named_run


def child(case: dict, out: Path) -> None:
    """Run one case (``kernel_property.run_case``) with its kernel options; one JSON line to ``out``."""
    import kernel_property as kp
    from bitlower.codegen.plan import KernelOptions

    sync_launches()
    options = case.get("options")
    if options:
        real_build = kp.build

        def build(c, device):
            built = real_build(c, device)
            built["kwargs"]["kernel_options"] = KernelOptions(**options)
            return built

        kp.build = build
    kp.worker([case], out)


SANITIZER_LINE = re.compile(r"=========\s+(Invalid .*|Out-of-range .*|.*[Rr]ace.*|Uninitialized .*|.*hazard.*)$")
AT_LINE = re.compile(r"=========\s+at (\S+) in (\S+)")


def run_case(case: dict, folder: Path, tool: str | None) -> dict:
    """The case in a fresh process (under the sanitizer unless ``tool`` is None): verdict, launches, errors."""
    rows = folder / f"case{case['index']}.jsonl"
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, %r); import kernel_sanitize as ks; "
            "ks.child(json.loads(%r), Path(%r))" % (str(Path(__file__).parent), json.dumps(case), str(rows)))
    prefix = ["compute-sanitizer", "--tool", tool, "--print-limit", "200"] if tool else []
    proc = subprocess.run(prefix + [sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    text = proc.stdout + proc.stderr
    launches = [line.split()[1] for line in text.splitlines() if line.startswith("LAUNCH ")]
    errors, kind = {}, None
    for line in text.splitlines():
        if (m := SANITIZER_LINE.search(line)):
            kind = m.group(1).strip()
        elif (m := AT_LINE.search(line)) and kind:
            key = f"{kind} at {m.group(1).split('+')[0]} ({m.group(2)})"
            errors[key] = errors.get(key, 0) + 1
            kind = None
    summary = re.search(r"ERROR SUMMARY: (\d+) error", text)
    results = [json.loads(x) for x in rows.read_text().splitlines() if "started" not in x] if rows.exists() else []
    row = results[0] if results else {}
    return dict(case=case, name=_name(case), exit=proc.returncode, errors=errors,
                error_count=int(summary.group(1)) if summary else None, last_launch=launches[-1] if launches else "",
                held=row.get("held"), failed_checks=[name for name, (err, bound) in (row.get("checks") or {}).items()
                                                     if err > bound],
                plan=row.get("plan"), python_error=row.get("error"), tail=text[-1500:])


def table(results: list[dict]) -> str:
    lines = ["| case | plan | held | sanitizer errors | first error | last launch |", "|---|---|---|---|---|---|"]
    for r in results:
        first = next(iter(r["errors"]), "")
        described = r["plan"] or {}
        plan = " ".join(described.get(key, "?" if key == "forward" else "") for key in ("forward", "tiles", "backward"))
        held = f"{r['held']} ({', '.join(r['failed_checks'])})" if r.get("failed_checks") else r["held"]
        lines.append(f"| {r['name']} | {plan} | {held} | {r['error_count']} | {first} | {r['last_launch']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--tool", default="memcheck", help="memcheck, racecheck, initcheck, synccheck")
    parser.add_argument("--no-sanitizer", action="store_true", help="synchronised, named launches only")
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--only", type=str, default="", help="comma-separated case indices")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / "sanitize_rows"
    folder.mkdir(exist_ok=True)
    grid = cases()
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        grid = [c for c in grid if c["index"] in keep]
    tool = None if args.no_sanitizer else args.tool
    results = []
    # each case is written as it finishes, so a call cut short by its time limit keeps what it ran
    with ThreadPoolExecutor(args.jobs) as pool, open(args.out / "kernel_sanitize.jsonl", "w") as handle:
        for r in pool.map(lambda c: run_case(c, folder, tool), grid):
            results.append(r)
            handle.write(json.dumps(r) + "\n")
            handle.flush()
            print(table([r]).splitlines()[-1], flush=True)
    import torch
    import triton

    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                tool=tool or "none (synchronised launches)")
    text = table(results)
    write_report(str(args.out), "kernel_sanitize", meta, text)
    print(text)
    bad = [r for r in results if r["errors"] or not r["held"] or r["exit"] not in (0, None)]
    print(f"\n{len(results)} cases, {len(bad)} with errors, crashes or failed checks")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
