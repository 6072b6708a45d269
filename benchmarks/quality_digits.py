"""Model quality on digits: full precision vs every binary-attention method, mean ± std over seeds.

Question: on data that ships with the project, do the two seed papers' orderings hold —
sign stop-grad the worst trained method, QAT + distillation within about a point of full
precision or better?

Per task and seed: a full-precision (FP) model is trained; every binary method starts from a
copy of it (QAT from the FP checkpoint, as BinaryAttention does) and fine-tunes with the same
optimiser; "post-training binarized" is the copy binarized with no training. Every row is
evaluated the same way on the held-out test split (digits: 360 images, 1 image = 0.28 points).
The seed sets the model init, the binary parameters' init and the data order.

Tasks (columns): ``pixel64`` (pixel transformer, 8x8 digits, N = 64), ``vit`` (ViT, digits
upsampled to 32x32, patch 4, N = 65), ``pixel1024`` (pixel transformer, 32x32, N = 1024).
``--data cifar10:<path>`` or ``imagefolder:<path>`` (test split ``test/``, else ``val/``)
replaces digits and gives the same table.

Run (the one command; 9 (task, seed) processes at once on one GPU, then the table):

    python benchmarks/quality_digits.py --task all --seeds 0 1 2 --out $OUT

Expected wall on one H100 (16 cores): about 5 minutes; an estimate, not a measurement (one
process alone took 80-90 s per pixel64 or vit seed at these steps). ``--budget-s`` (500) stops
whatever is unfinished, so the table is written within about 8.5 minutes either way. On a 2-core
CPU one (task, seed) at ``--fp-steps 5 --qat-steps 3`` took 40-60 s (pixel64, vit); pixel1024 runs
the exact reference there (``--batch-size 4 --max-test-images 8``, 2 / 1 steps: 90 s).

One (task, seed) per process writes ``records/quality_<task>_seed<s>.jsonl``, a line per method
as soon as it is measured (steps, batch, wall time included); ``--report DIR`` turns every
record under DIR into ``quality.md`` (printed), ``quality.json`` and ``quality.png``.
``--budget-s`` stops unfinished processes so that the table is still written in time; a cell
then shows its smaller n.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from bitlower.models import create_model, load_dataset
from bitlower.runtime import DistillConfig, TrainConfig, binarize_, preset, train_classifier
from bitlower.runtime.distributed import collate

log = logging.getLogger("quality_digits")


@dataclass(frozen=True)
class Method:
    """A table row: the preset it binarizes with (None: full precision) and how it trains."""

    name: str
    preset: str | None = None
    overrides: tuple = ()
    distill: str = "none"
    trains: bool = True


FP, STOPGRAD, DISTILLED = "full precision", "sign stop-grad", "BinaryAttention + distill"
METHODS = (  # table order
    Method(FP),
    # mean|q| * sgn(q) as BinaryAttention, without its bias table (untrained, it would only add noise)
    Method("post-training binarized", "binary_attention", (("bias", "none"),), trains=False),
    Method("sign-STE", "sign_ste"),
    Method(STOPGRAD, "sign_stopgrad"),
    Method("Hamming", "hamming"),
    Method("HammingG", "hamming_g"),
    Method("HammingB", "hamming_b"),
    Method("BinaryAttention", "binary_attention"),
    Method(DISTILLED, "binary_attention", distill="hard"),
)
# Run order: the rows the ordering checks need first; HammingB last, because the fused kernels
# do not cover its two sign planes and the reference path is the slowest at N = 1024, so a run
# stopped by --budget-s loses it first.
RUN_ORDER = (FP, "post-training binarized", DISTILLED, STOPGRAD, "sign-STE", "Hamming", "HammingG",
             "BinaryAttention", "HammingB")
DISTILL_TOLERANCE = 1.0  # points: "within ~1 point of full precision" (the issue)


@dataclass(frozen=True)
class Task:
    """A table column: model, input size and its training settings."""

    label: str
    model: str
    overrides: dict
    image_size: int
    fp_steps: int
    qat_steps: int
    batch_size: int


# Pixel transformer width 128, 2 heads: D = 64, Dv = D / 4 = 16 (the fused kernels take Dv >= 16).
PIXEL = dict(embed_dim=128, depth=4, num_heads=2)
# Steps: the earlier H100 run took 80-90 s per (task, seed) at 500 FP + 7 x 200 QAT steps, batch
# 128, for pixel64 and vit, one process at a time; pixel1024 at batch 128 did not finish one seed in
# that time. At N = 1024 the batch is 64 and the steps fewer: HammingB runs the reference there (the
# fused kernels do not cover two sign planes), whose forward + backward peaks at ~280 MB per image
# (float32, measured on CPU), ~18 GB at batch 64, so three pixel1024 processes share one 80 GB GPU.
TASKS = {
    "pixel64": Task("pixel transformer, N = 64", "pixel_tiny", PIXEL, 8, 500, 200, 128),
    "vit": Task("ViT, N = 65", "vit_tiny_patch16",
                dict(embed_dim=64, depth=4, num_heads=4, patch_size=4), 32, 500, 200, 128),
    "pixel1024": Task("pixel transformer, N = 1024", "pixel_tiny", PIXEL, 32, 400, 150, 64),
}
LAUNCH_ORDER = ("pixel1024", "vit", "pixel64")  # longest first


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", nargs="+", default=["all"], choices=sorted(TASKS) + ["all"], help="default: all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument("--data", default="digits", help="digits (default), cifar10:<path>, imagefolder:<path>")
    p.add_argument("--fp-steps", type=int, default=None, help="FP training steps (default: 500; pixel1024 400)")
    p.add_argument("--qat-steps", type=int, default=None,
                   help="fine-tuning steps of each binary method (default: 200; pixel1024 150)")
    p.add_argument("--batch-size", type=int, default=None, help="train and eval batch (default: 128; pixel1024 64)")
    p.add_argument("--max-test-images", type=int, default=None,
                   help="evaluate on the first N test images only (smoke runs; recorded)")
    p.add_argument("--compile-backend", default=None, help="e.g. bitlower (GPU); default: eager")
    p.add_argument("--jobs", type=int, default=9,
                   help="(task, seed) processes at once (default: 9); 1 runs them in this process")
    p.add_argument("--budget-s", type=float, default=500.0,
                   help="stop the processes still running after this many seconds (default: 500)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: CPU count / processes at once)")
    p.add_argument("--out", default="runs/quality", help="default: runs/quality")
    p.add_argument("--report", metavar="DIR", default=None, help="only write the table of DIR's records")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # child processes
    args = p.parse_args(argv)
    args.task = list(TASKS) if "all" in args.task else list(dict.fromkeys(args.task))
    return args


def settings(task: str, args) -> Task:
    """The task with the command line's step and batch overrides."""
    given = {"fp_steps": args.fp_steps, "qat_steps": args.qat_steps, "batch_size": args.batch_size}
    return replace(TASKS[task], **{k: v for k, v in given.items() if v is not None})


# ------------------------------------------------------------------ one (task, seed)


def load_split(spec: str, split: str, image_size: int, device, limit=None):
    """A split held as tensors on ``device`` (normalised and resized once), and its class count."""
    kind, _, path = spec.partition(":")
    root = Path(path if kind == "imagefolder" else spec)
    if split == "test" and root.is_dir() and not (root / "test").is_dir() and (root / "val").is_dir():
        split = "val"  # image folders often name their evaluation split so
    ds = load_dataset(spec, split, image_size=image_size)
    if callable(getattr(ds, "tensors", None)):
        x, y = ds.tensors()
    else:  # image folders read files per item: read them all once
        x, y = collate(ds, torch.arange(len(ds)))
    x, y = (x, y) if limit is None else (x[:limit], y[:limit])
    return TensorDataset(x.to(device), y.to(device)), ds.num_classes


def build_model(task: Task, seed: int, data: TensorDataset, num_classes: int):
    torch.manual_seed(seed)
    x = data.tensors[0]  # (N, C, H, W)
    return create_model(task.model, **task.overrides, img_size=x.shape[-1], in_chans=x.shape[1],
                        num_classes=num_classes)


@torch.no_grad()
def evaluate(model, data: TensorDataset, batch: int) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy, under the autocast training used (bf16 on CUDA)."""
    x, y = data.tensors
    model.eval()
    correct, loss = 0, 0.0
    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.device.type == "cuda"):
        for start in range(0, len(y), batch):
            logits = model(x[start:start + batch]).float()
            labels = y[start:start + batch]
            correct += int((logits.argmax(-1) == labels).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    return {"accuracy": 100.0 * correct / len(y), "eval_loss": loss / len(y)}


def fit(model, data, steps: int, lr: float, task: Task, seed: int, args, teacher=None, distill="none") -> dict:
    cfg = TrainConfig(steps=steps, batch_size=task.batch_size, lr=lr, warmup_steps=steps // 20, seed=seed,
                      progress=False, log_every=0, compile_backend=args.compile_backend)
    return train_classifier(model, data, cfg, teacher=teacher, distill=DistillConfig(distill))


def run_pair(name: str, seed: int, args) -> None:
    """Every method of one (task, seed); a JSON line per method as soon as it is measured."""
    begin = time.perf_counter()
    task = settings(name, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_set, classes = load_split(args.data, "train", task.image_size, device)
    test_set, _ = load_split(args.data, "test", task.image_size, device, args.max_test_images)
    sink = Path(args.out) / "records" / f"quality_{name}_seed{seed}.jsonl"
    sink.parent.mkdir(parents=True, exist_ok=True)
    sink.write_text("")  # this (task, seed) starts over
    base = {"task": name, "seed": seed, "data": args.data, "device": _device_name(device),
            "torch": torch.__version__, "batch_size": task.batch_size, "fp_steps": task.fp_steps,
            "qat_steps": task.qat_steps, "train_images": len(train_set), "test_images": len(test_set)}
    fp = build_model(task, seed, train_set, classes).to(device)
    for method in sorted(METHODS, key=lambda m: RUN_ORDER.index(m.name)):
        start = time.perf_counter()
        model, trained = fp, {}
        if method.preset is None:
            trained = fit(fp, train_set, task.fp_steps, 1e-3, task, seed, args)
        else:
            model = copy.deepcopy(fp)
            torch.manual_seed(seed)  # the binary parameters' init (θ networks, bias tables)
            binarize_(model, preset(method.preset, keep_teacher=False, **dict(method.overrides)))
            if method.trains:
                trained = fit(model, train_set, task.qat_steps, 5e-4, task, seed, args,
                              teacher=fp if method.distill != "none" else None, distill=method.distill)
        row = {**base, "method": method.name, **evaluate(model, test_set, task.batch_size),
               "steps": trained.get("step", 0), "steps_per_s": trained.get("steps_per_s"),
               "wall_s": time.perf_counter() - start, "run_s": time.perf_counter() - begin}
        with sink.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("%s seed %d %-26s %6.2f%% (%d steps, %.1f s)", name, seed, method.name, row["accuracy"],
                 row["steps"], row["wall_s"])


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ------------------------------------------------------------------ many (task, seed) at once


def child_command(task: str, seed: int, args, threads: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--task", task, "--seeds", str(seed), "--jobs", "1",
           "--data", args.data, "--out", args.out, "--threads", str(threads), "--no-report"]
    for flag in ("fp_steps", "qat_steps", "batch_size", "max_test_images", "compile_backend"):
        if getattr(args, flag) is not None:
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return cmd


def launch(pairs: list[tuple[str, int]], args) -> int:
    """Run each (task, seed) as its own process, ``--jobs`` at once, stopping them at ``--budget-s``."""
    logs = Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // min(args.jobs, len(pairs)))
    # Less fragmentation where several processes share one GPU's memory (the user's setting wins).
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ}
    waiting, running, failed, runs, begin = list(pairs), {}, [], [], time.perf_counter()
    while waiting or running:
        while waiting and len(running) < args.jobs:
            task, seed = waiting.pop(0)
            path = logs / f"{task}_seed{seed}.log"
            with path.open("w") as out:  # the child keeps its own copy of the descriptor
                proc = subprocess.Popen(child_command(task, seed, args, threads), stdout=out,
                                        stderr=subprocess.STDOUT, env=env)
            running[proc] = (task, seed, path, time.perf_counter())
        for proc in [p for p in running if p.poll() is not None]:
            task, seed, path, start = running.pop(proc)
            runs.append({"task": task, "seed": seed, "rc": proc.returncode, "wall_s": time.perf_counter() - start})
            log.info("%s seed %d finished, rc %d, %.0f s", task, seed, proc.returncode, runs[-1]["wall_s"])
            if proc.returncode:
                failed.append((task, seed))
                log.error("%s seed %d failed; last lines of %s:\n%s", task, seed, path,
                          "\n".join(path.read_text().splitlines()[-15:]))
        if time.perf_counter() - begin > args.budget_s and (running or waiting):
            log.error("budget of %.0f s spent: stopping %d runs, %d never started", args.budget_s,
                      len(running), len(waiting))
            failed += [running[p][:2] for p in running] + waiting
            _stop(list(running))
            waiting, running = [], {}
        time.sleep(0.5)
    wall = time.perf_counter() - begin
    (Path(args.out) / "launch.json").write_text(json.dumps(
        {"pairs": pairs, "jobs": args.jobs, "threads": threads, "wall_s": wall, "budget_s": args.budget_s,
         "unfinished": failed, "runs": runs}, indent=1))
    log.info("%d (task, seed) runs in %.0f s with %d at once", len(pairs), wall, args.jobs)
    return 1 if failed else 0


def _stop(procs) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ the table


def load_records(folder: Path) -> list[dict]:
    """Every record under ``folder``; a (task, seed, method) measured twice keeps its last line."""
    found = {}
    for path in sorted(folder.rglob("quality_*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a process stopped while writing
                log.warning("skipping an unreadable line of %s: %r", path, line[:80])
                continue
            found[(row["task"], row["seed"], row["method"])] = row
    return list(found.values())


def by_seed(records: list[dict], task: str) -> dict[int, dict[str, float]]:
    """``{seed: {method: accuracy %}}`` of one task."""
    out: dict[int, dict[str, float]] = {}
    for r in records:
        if r["task"] == task:
            out.setdefault(r["seed"], {})[r["method"]] = r["accuracy"]
    return dict(sorted(out.items()))


def stopgrad_worst(acc: dict[str, float]) -> bool | None:
    """Sign stop-grad at or below every other trained method (None: not measured)."""
    others = [acc[m.name] for m in METHODS if m.trains and m.preset and m.name != STOPGRAD and m.name in acc]
    return None if STOPGRAD not in acc or not others else acc[STOPGRAD] <= min(others)


def distill_close(acc: dict[str, float]) -> bool | None:
    """QAT + distillation within DISTILL_TOLERANCE points of full precision, or better."""
    return None if FP not in acc or DISTILLED not in acc else acc[DISTILLED] >= acc[FP] - DISTILL_TOLERANCE


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(records: list[dict]) -> dict:
    """Per task: mean, std, n and the seeds' values per method; the ordering checks; the settings."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    out = {}
    for task in tasks:
        seeds = by_seed(records, task)
        rows = {}
        for m in METHODS:
            values = [acc[m.name] for acc in seeds.values() if m.name in acc]
            if values:
                mean, std = _mean_std(values)
                rows[m.name] = {"mean": mean, "std": std, "n": len(values), "values": values}
        means = {name: row["mean"] for name, row in rows.items()}
        mine = [r for r in records if r["task"] == task]
        out[task] = {
            "label": TASKS[task].label, "seeds": list(seeds), "methods": rows,
            "stopgrad_worst": {"mean": stopgrad_worst(means), "seeds": [stopgrad_worst(a) for a in seeds.values()]},
            "distill_close": {"mean": distill_close(means), "seeds": [distill_close(a) for a in seeds.values()]},
            "settings": sorted({(r["fp_steps"], r["qat_steps"], r["batch_size"], r["test_images"], r["data"],
                                 r["device"]) for r in mine}),
            "wall_s": [max(r["run_s"] for r in mine if r["seed"] == s) for s in seeds],
        }
    return out


def _cell(row: dict | None, n_seeds: int) -> str:
    if row is None:
        return "—"
    text = f"{row['mean']:.2f}" if row["n"] == 1 else f"{row['mean']:.2f} ± {row['std']:.2f}"
    return text if row["n"] == n_seeds else f"{text} (n = {row['n']})"


def _check(result: dict) -> str:
    seeds = [s for s in result["seeds"] if s is not None]
    verdict = {True: "yes", False: "no", None: "not measured"}[result["mean"]]
    return f"{verdict} on the means, {sum(seeds)} of {len(seeds)} seeds"


def markdown(summary: dict, launch: dict | None) -> str:
    tasks = list(summary)
    lines = ["| method | " + " | ".join(summary[t]["label"] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in METHODS:
        lines.append(f"| {m.name} | " + " | ".join(
            _cell(summary[t]["methods"].get(m.name), len(summary[t]["seeds"])) for t in tasks) + " |")
    lines.append("| seeds | " + " | ".join(", ".join(map(str, summary[t]["seeds"])) for t in tasks) + " |")
    lines.append("| FP / QAT steps, batch, test images | " + " | ".join(
        "; ".join(f"{fp} / {qat}, {b}, {n}" for fp, qat, b, n, _, _ in summary[t]["settings"]) for t in tasks) + " |")
    lines.append("| time per seed after start-up (s) | " + " | ".join(
        ", ".join(f"{w:.0f}" for w in summary[t]["wall_s"]) for t in tasks) + " |")
    datas = sorted({s[4] for t in tasks for s in summary[t]["settings"]})
    devices = sorted({s[5] for t in tasks for s in summary[t]["settings"]})
    head = [f"Top-1 accuracy (%) on the held-out test split, mean ± std over seeds (sample std); data "
            f"{', '.join(datas)}; device {', '.join(devices)}."]
    if launch:
        walls = ", ".join(f"{r['task']} seed {r['seed']} {r['wall_s']:.0f} s" for r in launch.get("runs", []))
        head.append(f"Whole run: {launch['wall_s']:.0f} s wall, {launch['jobs']} processes at once; "
                    f"unfinished (task, seed): {launch['unfinished'] or 'none'}; each process with its "
                    f"start-up: {walls or '-'}.")
    checks = ["", "Ordering holds? (computed from the numbers above)", ""]
    for t in tasks:
        checks.append(f"- {summary[t]['label']}: sign stop-grad the lowest trained method: "
                      f"{_check(summary[t]['stopgrad_worst'])}; BinaryAttention + distill within "
                      f"{DISTILL_TOLERANCE:g} point of full precision or better: "
                      f"{_check(summary[t]['distill_close'])}.")
    verdicts = [summary[t][k]["mean"] for t in tasks for k in ("stopgrad_worst", "distill_close")]
    overall = "yes" if all(v is True for v in verdicts) else "no" if all(v is False for v in verdicts) else "partly"
    checks.append(f"- Both orderings, every task, on the means: **{overall}**.")
    return "\n".join(head + [""] + lines + checks) + "\n"


def _bars(ax, summary: dict, names: list[str]) -> list[float]:
    """Grouped bars (mean ± std) with the seeds as dots; returns every plotted value."""
    tasks, plotted = list(summary), []
    width = 0.8 / max(len(tasks), 1)
    for i, task in enumerate(tasks):
        rows = summary[task]["methods"]
        xs = [j + (i - (len(tasks) - 1) / 2) * width for j, name in enumerate(names) if name in rows]
        present = [rows[name] for name in names if name in rows]
        stds = [0.0 if r["n"] < 2 else r["std"] for r in present]
        ax.bar(xs, [r["mean"] for r in present], width, yerr=stds, capsize=2, label=summary[task]["label"])
        for x, r in zip(xs, present):
            ax.plot([x] * len(r["values"]), r["values"], "k.", markersize=3)
            plotted += r["values"]
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("top-1 test accuracy (%)")
    return plotted


def plot(summary: dict, path: Path) -> None:
    """Every method on a 0-100 scale (top); full precision and the trained methods zoomed (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, zoom) = plt.subplots(2, 1, figsize=(11, 8))
    _bars(full, summary, [m.name for m in METHODS])
    full.set_ylim(0, 100)
    full.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(summary), fontsize=8, frameon=False)
    values = _bars(zoom, summary, [m.name for m in METHODS if m.trains])
    if values:
        zoom.set_ylim(max(0.0, min(values) - 2.0), min(100.0, max(values) + 1.0))
    zoom.set_title("full precision and trained methods (zoomed)", fontsize=9)
    fig.suptitle("binary attention methods vs full precision (bars: mean ± std over seeds; dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(folder: Path) -> str:
    """Write ``quality.md``, ``quality.json`` and ``quality.png`` of the records under ``folder``."""
    records = load_records(folder)
    if not records:
        raise SystemExit(f"no quality_*.jsonl records under {folder}")
    launch_path = folder / "launch.json"
    launch = json.loads(launch_path.read_text()) if launch_path.exists() else None
    summary = summarise(records)
    text = markdown(summary, launch)
    (folder / "quality.md").write_text(text)
    (folder / "quality.json").write_text(json.dumps({"summary": summary, "launch": launch}, indent=1))
    plot(summary, folder / "quality.png")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.report is not None:
        print(report(Path(args.report)), flush=True)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    order = [t for t in LAUNCH_ORDER if t in args.task]
    pairs = [(task, seed) for task in order for seed in args.seeds]
    if not args.no_report:
        (Path(args.out) / "launch.json").unlink(missing_ok=True)  # written again by a parallel run
    code = 0
    if args.jobs > 1 and len(pairs) > 1:
        code = launch(pairs, args)
    else:
        for task, seed in pairs:
            run_pair(task, seed, args)
    if not args.no_report:
        print(report(Path(args.out)), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
