"""Shared pieces of the benchmark scripts: GPU timing, crash-isolated worker processes, report files.

Each script in ``benchmarks/`` answers one question and imports these (run as ``python benchmarks/X.py``,
so this folder is on ``sys.path``).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import torch

log = logging.getLogger("bench")


def with_attribute(fn, owner, name: str, value):
    """``fn`` with ``owner.name`` set to ``value`` for each call (the value before it restored after)."""
    def call():
        before = getattr(owner, name)
        setattr(owner, name, value)
        try:
            return fn()
        finally:
            setattr(owner, name, before)
    return call


def timm_qkv(bsz: int, heads: int, n: int, dim: int, seed: int = 0):
    """q, k, v ``(B, H, N, D)`` bf16 views of one ``(B, N, 3, H, D)`` tensor, as timm's attention makes them."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(bsz, n, 3, heads, dim, device="cuda", generator=gen).to(torch.bfloat16)
    return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


def bench(fn) -> float:
    """Median ms of CUDA-graph replays of ``fn``; plain event timing where capture fails."""
    return timed(fn)[0]


def timed(fn) -> tuple[float, str]:
    """``(median ms, "graph")`` of CUDA-graph replays of ``fn`` (device time alone), or ``(ms, "events")`` of
    plain event timing where capture fails (host dispatch included when the host is the slower side)."""
    import triton.testing as tt

    fn()
    torch.cuda.synchronize()
    try:
        return float(tt.do_bench_cudagraph(fn, rep=100, return_mode="median")), "graph"
    except Exception as exc:  # noqa: BLE001 - some backends refuse capture; say so and time them plainly
        log.warning("graph capture failed (%s: %s); event timing", type(exc).__name__, str(exc).splitlines()[0][:120])
        torch.cuda.synchronize()
        return float(tt.do_bench(fn, warmup=25, rep=100, return_mode="median")), "events"


def kernel_times(fn, calls: int = 5) -> dict[str, float]:
    """Mean device time (ms) per call of each kernel ``fn`` launches."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        if evt.device_time_total > 0:
            out[evt.key[:60]] = round(evt.device_time_total / calls / 1000.0, 4)
    return out


def guarded(rows: dict, name: str, fn) -> None:
    """``rows[name]`` = time of ``fn``, or no row (logged) when that backend fails on this shape."""
    try:
        rows[name] = bench(fn)
    except Exception as exc:  # noqa: BLE001 - a failing comparison backend must not end the run
        log.warning("%s failed: %s", name, str(exc).splitlines()[0][:200])


def poison(nbytes: int) -> None:
    """Fill freed allocator blocks with NaN, so an unwritten output element shows up as NaN."""
    junk = torch.empty(max(nbytes, 2**20) // 4 * 2, device="cuda").fill_(float("nan"))
    del junk


def run_worker(script: str, argv: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python script *argv`` in a fresh process (optionally under ``prefix``, e.g. compute-sanitizer).

    A CUDA fault (an illegal memory access loses the context) ends that process only.
    """
    return subprocess.run([*(prefix or []), sys.executable, script, *argv], capture_output=True, text=True,
                          check=False)


def write_report(out: str, stem: str, meta: dict, table: str, extra_md: str = "") -> None:
    """``out/stem.json`` (``meta``) and ``out/stem.md`` (a header line from ``meta``, ``table``, ``extra_md``)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    header = ", ".join(f"{k} {meta[k]}" for k in ("gpu", "torch", "triton", "python") if k in meta)
    with open(os.path.join(out, f"{stem}.md"), "w") as fh:
        fh.write((header + "\n\n" if header else "") + table + "\n" + extra_md)


def bar_plot(path: str, panels: list[tuple[str, list[str], dict[str, list[float]]]], ylabel: str) -> None:
    """One PNG of grouped bars: each panel is ``(title, group labels, {series: values per group})``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, labels, series) in zip(axes[0], panels):
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# patch grids (Gh, Gw, prefix) giving each benchmark N, for the table bias rows
TABLE_GRIDS = {197: (14, 14, 1), 256: (16, 16, 0), 1024: (32, 32, 0), 1680: (40, 42, 0), 4096: (64, 64, 0),
               16384: (128, 128, 0)}


def table_token_inputs(shape):
    """``(a, b, table)`` on CUDA for a table-bias + token-weighting row of ``shape`` (B, H, N, D): per-token
    scalars in [0.5, 1.5) and a relative-position table of ``TABLE_GRIDS[N]`` (bf16)."""
    import torch

    from bitlower.relpos import table_rows

    bsz, heads, n, _ = shape
    grid = TABLE_GRIDS[n]
    table = 0.02 * torch.randn(table_rows(grid[0], grid[1]), heads, device="cuda", dtype=torch.bfloat16)
    a = torch.rand(bsz, heads, n, device="cuda", dtype=torch.bfloat16) + 0.5
    b = torch.rand(bsz, heads, n, device="cuda", dtype=torch.bfloat16) + 0.5
    return a, b, table
