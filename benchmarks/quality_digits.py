"""Model quality on digits: full precision vs every binary-attention method, 3 seeds.

Question: on data that ships with the project, do the two seed papers' orderings hold —
sign stop-grad worst, QAT + distillation within about a point of full precision?

Per task and seed: a full-precision model is trained (``--fp-steps``); every binary method
starts from a copy of it (QAT from the full-precision checkpoint, as BinaryAttention does) and
fine-tunes ``--qat-steps`` with the same optimiser; "post-training" is the copy binarized with
no training. Methods: sign-STE, sign stop-grad, Hamming, HammingG, HammingB, BinaryAttention
without and with hard self-distillation from the full-precision model.

Tasks: ``pixel64`` (pixel transformer, 8x8 digits, N = 64), ``pixel1024`` (digits upsampled
to 32x32, N = 1024), ``vit`` (ViT, 32x32, patch 4, N = 65). ``--data cifar10:<path>`` or
``imagefolder:<path>`` replaces digits.

Run: ``python benchmarks/quality_digits.py --task pixel64 --out runs/quality`` (CPU, minutes);
the three tasks on a GPU: ``--task all``. Writes ``quality_<task>.json``, ``.md`` and ``.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from bitlower.models import create_model, load_dataset
from bitlower.runtime import DistillConfig, TrainConfig, binarize_, preset
from bitlower.runtime.tasks import ClassificationTask
from bitlower.runtime.distributed import DistContext
from bitlower.runtime.trainer import Trainer

log = logging.getLogger("quality_digits")

# name -> (preset name, preset overrides, distillation, trains)
METHODS = {
    "full precision": None,
    "post-training binarized": ("binary_attention", dict(bias="none"), "none", False),
    "sign-STE": ("sign_ste", {}, "none", True),
    "sign stop-grad": ("sign_stopgrad", {}, "none", True),
    "Hamming": ("hamming", {}, "none", True),
    "HammingG": ("hamming_g", {}, "none", True),
    "HammingB": ("hamming_b", {}, "none", True),
    "BinaryAttention": ("binary_attention", {}, "none", True),
    "BinaryAttention + distill": ("binary_attention", {}, "hard", True),
}

TASKS = {
    # name -> (model name, model overrides, image size)
    # width 128, 2 heads: D = 64, Dv = D / 4 = 16 (the fused kernels take Dv >= 16)
    "pixel64": ("pixel_tiny", dict(embed_dim=128, depth=4, num_heads=2), 8),
    "pixel1024": ("pixel_tiny", dict(embed_dim=128, depth=4, num_heads=2), 32),
    "vit": ("vit_tiny_patch4", dict(embed_dim=64, depth=4, num_heads=4, patch_size=4), 32),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="pixel64", choices=sorted(TASKS) + ["all"])
    parser.add_argument("--data", default="digits", help="digits, cifar10:<path>, imagefolder:<path>")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fp-steps", type=int, default=1500)
    parser.add_argument("--qat-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--compile-backend", default=None, help="e.g. bitlower (GPU); default eager")
    parser.add_argument("--out", default="runs/quality")
    return parser.parse_args()


def build_model(task: str, data, seed: int):
    name, overrides, _ = TASKS[task]
    torch.manual_seed(seed)
    sample, _ = data[0]
    kwargs = dict(overrides, img_size=sample.shape[-1], in_chans=sample.shape[0], num_classes=data.num_classes)
    if name.startswith("vit"):
        return create_model("vit_tiny_patch16_224", **kwargs)
    return create_model(name, **kwargs)


def train(model, train_set, test_set, steps, args, seed, teacher=None, distill="none"):
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=1e-3 if teacher is None else 5e-4,
                      warmup_steps=steps // 20, seed=seed, progress=False, log_every=0,
                      compile_backend=args.compile_backend)
    task = ClassificationTask(DistillConfig(distill) if distill != "none" else DistillConfig("none"), test_set)
    return Trainer(model, task, train_set, cfg, teacher=teacher).run()


def accuracy(model, test_set) -> float:
    device = next(model.parameters()).device
    return ClassificationTask(eval_set=test_set).evaluate(model, DistContext(device=device))["accuracy"]


def record(sink: Path, task: str, seed: int, method: str, accuracy: float, seconds: float) -> None:
    """One JSON line per finished (task, seed, method): a run cut short keeps what it measured."""
    log.info("%s seed %d %-26s %.4f (%.0f s)", task, seed, method, accuracy, seconds)
    with sink.open("a") as f:
        f.write(json.dumps({"task": task, "seed": seed, "method": method, "accuracy": accuracy}) + "\n")


def run_seed(task: str, seed: int, train_set, test_set, args, sink: Path) -> dict[str, float]:
    """Accuracy of every method for one seed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fp = build_model(task, train_set, seed).to(device)
    start = time.perf_counter()
    results = {"full precision": train(fp, train_set, test_set, args.fp_steps, args, seed)["accuracy"]}
    record(sink, task, seed, "full precision", results["full precision"], time.perf_counter() - start)
    for method, spec in METHODS.items():
        if spec is None:
            continue
        preset_name, overrides, distill, trains = spec
        student = copy.deepcopy(fp)
        binarize_(student, preset(preset_name, keep_teacher=False, **overrides))
        start = time.perf_counter()
        if trains:
            train(student, train_set, test_set, args.qat_steps, args, seed,
                  teacher=fp if distill != "none" else None, distill=distill)
        results[method] = accuracy(student, test_set)
        record(sink, task, seed, method, results[method], time.perf_counter() - start)
    return results


def summarise(task: str, per_seed: list[dict[str, float]], args) -> str:
    lines = [f"### {task} ({args.data}; seeds {args.seeds}; FP {args.fp_steps} steps, QAT {args.qat_steps} steps)",
             "", "| method | top-1 accuracy (%) mean ± std |", "|---|---|"]
    for method in METHODS:
        values = [100 * r[method] for r in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {method} | {statistics.mean(values):.2f} ± {std:.2f} |")
    return "\n".join(lines)


def plot(task: str, per_seed, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(METHODS)
    means = [statistics.mean(100 * r[m] for r in per_seed) for m in names]
    stds = [statistics.stdev(100 * r[m] for r in per_seed) if len(per_seed) > 1 else 0.0 for m in names]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(names)), means, yerr=stds, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(max(0, min(means) - 10), 100)
    ax.set_title(f"digits quality: {task}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in sorted(TASKS) if args.task == "all" else [args.task]:
        image_size = TASKS[task][2]
        train_set = load_dataset(args.data, "train", image_size=image_size)
        test_set = load_dataset(args.data, "test", image_size=image_size)
        sink = out / f"quality_{task}.jsonl"
        per_seed = [run_seed(task, seed, train_set, test_set, args, sink) for seed in args.seeds]
        table = summarise(task, per_seed, args)
        print(table, flush=True)
        (out / f"quality_{task}.md").write_text(table + "\n")
        (out / f"quality_{task}.json").write_text(json.dumps({"args": vars(args), "per_seed": per_seed}, indent=1))
        plot(task, per_seed, out / f"quality_{task}.png")


if __name__ == "__main__":
    main()
