"""The report of ``benchmarks/e2e_speed.py``: one markdown table per kind (infer, train, compile) and a PNG.

Rows are the dicts ``e2e_speed.run_row`` returns (with ``table``, ``model``, ``batch``, ``grad_mode``,
per-backend results and ``ratio``, or ``error``).
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("e2e_speed")


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def table_md(kind: str, results: list[dict]) -> str:
    """The markdown table of one kind's rows (errors and fallbacks said in the row)."""
    if kind == "compile":
        head = ["model", "batch", "inductor first call s", "bitlower first call s",
                "bitlower compile speed (inductor s / bitlower s)", "sites rewritten", "bitlower path"]
    else:
        head = ["model", "batch"] + (["grad mode"] if kind == "train" else []) + [
            "inductor ms", "bitlower ms", "inductor img/s", "bitlower img/s",
            "bitlower speed-up (inductor ms / bitlower ms)", "peak GiB inductor / bitlower",
            "sites rewritten", "bitlower path"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["model"], str(r["batch"])] + ([r["grad_mode"]] if kind == "train" else [])
        if "error" in r:
            cells += [f"ERROR: {r['error']}"] + [""] * (len(head) - len(cells) - 1)
        else:
            ind, bit = r["inductor"], r["bitlower"]
            sites = f"{bit['sites_rewritten']} of {bit['attention_modules']}"
            flag = " FALLBACK" if bit["fallback"] else ""
            if kind == "compile":
                cells += [f"{ind['first_call_s']:.1f}", f"{bit['first_call_s']:.1f}{flag}", f"{r['ratio']:.2f}x"]
            else:
                cells += [f"{ind['ms']:.3f}", f"{bit['ms']:.3f}{flag}", f"{ind['images_per_s']:.1f}",
                          f"{bit['images_per_s']:.1f}", f"{r['ratio']:.2f}x{flag}",
                          f"{_fmt(ind['peak_gib'], '.2f')} / {_fmt(bit['peak_gib'], '.2f')}"]
            cells += [sites, bit["path"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_md(path: Path, meta: dict, results: list[dict], not_run: list[str]) -> str:
    """``path`` with the environment, the command and one table per kind; returns the tables."""
    kinds = list(dict.fromkeys(r["table"] for r in results))  # in the order the rows ran
    tables = "\n\n".join(f"### {k}\n\n{table_md(k, [r for r in results if r['table'] == k])}" for k in kinds)
    notes = [f"Device: {meta['device']}; torch {meta['torch']}, Triton {meta['triton']}, Python {meta['python']}; "
             f"{meta['date']}. Command: `{meta['command']}`",
             "bf16 autocast over float32 weights for both backends; ms = median of triton.testing.do_bench "
             "(no CUDA graphs) on CUDA, of time.perf_counter calls on CPU. Speed-up > 1: bitlower faster. "
             "FALLBACK: the bitlower run used the reference instead of the fused kernels (reasons in its path)."]
    if any(r.get("inductor", {}).get("shared_with") for r in results):
        notes.append("Training rows of one model share one Inductor measurement (it does not depend on grad_mode).")
    if not_run:
        notes.append(f"Not run (time budget): {', '.join(not_run)}; run them with "
                     f"`python benchmarks/e2e_speed.py --rows {' '.join(not_run)} --out {meta['out']}`.")
    path.write_text("# End-to-end speed: bitlower vs Inductor\n\n" + "\n\n".join(notes) + f"\n\n{tables}\n")
    return tables


def write_png(path: Path, meta: dict, results: list[dict]) -> None:
    """Speed-up bars, one panel per kind; fallback rows red. Skipped (logged) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", path.name)
        return
    done = [r for r in results if "ratio" in r]
    kinds = list(dict.fromkeys(r["table"] for r in done))
    if not kinds:
        return
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in done if r["table"] == kind]
        labels = [r["model"].replace(" (tiny)", "") + (f"\n{r['grad_mode']}" if r["grad_mode"] else "") for r in rows]
        colors = ["tab:red" if r["bitlower"]["fallback"] else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), [r["ratio"] for r in rows], color=colors)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel("compile speed (inductor s / bitlower s)" if kind == "compile"
                      else "bitlower speed-up (inductor ms / bitlower ms)")
        ax.set_title(f"{kind}, {meta['device']}" + (" (red: fallback)" if "tab:red" in colors else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
