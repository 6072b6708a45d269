"""Diffusion quality on digits: a small class-conditional DiT, full precision vs binary attention, same budget.

Question: at the same number of optimizer steps, does QAT + distillation give a binary-attention DiT
whose samples are as good as the full-precision one's?

Model: DiT on 8x8 one-channel digits, patch 2 (16 tokens), width 128, 4 blocks, 4 heads (D 32),
label dropout 0.1 (classifier-free guidance), DDPM objective (linear schedule, 1000 steps), DDIM
sampling (50 steps, guidance 2), batch 128, bf16 autocast on CUDA, no EMA.

Same-budget rule (``--steps S``, ``--qat-steps Q``, 0 < Q < S): every model gets S optimizer steps.

- full precision: one run of S steps (AdamW, lr 1e-3, 100 warmup steps, cosine over S);
- binary: the same run's checkpoint at step S - Q (written by ``stop_at``; the full-precision run
  continues from it by the runtime's exact resume), binarized (BinaryAttention preset: mean_abs
  scalars, relative-position bias, STE), then Q QAT steps (lr 3e-4, cosine over Q) with that
  step-(S - Q) model as the distillation teacher (MSE to its prediction, alpha 0.5). The final
  full-precision model is never seen by the binary one.

Rows: full precision at S; full precision at S - Q (the binary model's start and teacher);
post-training binarized (that start, binarized, no training); binary QAT + distilled; and real
train images as a floor for the Fréchet distance.

Metrics per model: denoising MSE of the predicted noise on the test split (fixed noise and
timesteps); Fréchet distance between the 64-d features of the project's digits classifier (a small
CNN trained here once, seed 0, on the train split; its test accuracy is reported) for 1,000
class-conditional samples (100 per class) against the 360 test images; accuracy of that classifier
on the samples w.r.t. the class asked for. A PNG grid of samples per model and seed (rows = classes).

Seeds: ``--seeds 0 1 2`` (model init, data order, noise, sampling); the table gives mean ± sample std
over seeds, the JSON every seed. Each seed runs in its own worker process, ``--jobs`` at a time
(default on CUDA: all seeds at once on the one GPU; the model is tiny and the run is bound by
kernel-launch overhead on one CPU core per process, so parallel workers share the GPU well). After
``--budget-s`` the workers still running are stopped and the table is written from what finished
(each worker writes its results after every phase).

Run (one H100, default: 3 seeds, S = 2300, Q = 800): ``python benchmarks/diffusion_digits.py --out $OUT``.
Expected 2-4 minutes wall, not yet measured: section 3 of RESULTS.md measured 22-29 ms per optimizer
step of a small ViT in this runtime on an H100; 3,100 steps per seed at up to 40 ms with three workers
sharing the GPU is about 2 minutes, plus start-up, kernel compilation and sampling. ``--budget-s 450``
stops the workers at 7.5 minutes whatever happens. CPU smoke run (under a minute, numbers
meaningless): ``python benchmarks/diffusion_digits.py --steps 8 --qat-steps 4 --batch-size 16 --samples-per-class 2
--sample-steps 5 --classifier-steps 20 --seeds 0 1 --jobs 2 --out runs/diffusion_smoke``.

Writes ``diffusion_digits.{json,md}``, ``samples_<model>_seed<k>.png``, ``samples_real_test.png`` (test
images, same layout) and ``seed_<k>/`` (worker log, training metrics, the seed's results).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import signal
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bitlower.models import DiT, DiTConfig, load_digits_tensors
from bitlower.runtime import (DiffusionConfig, NoiseSchedule, TrainConfig, binarize_, ddim_sample, preset,
                              train_diffusion)
from bitlower.runtime.distributed import DistContext
from bitlower.runtime.tasks import DiffusionTask

log = logging.getLogger("diffusion_digits")

LABEL_DROPOUT = 0.1  # DiT's classifier-free-guidance label dropout
CLASSIFIER_SEED = 0  # one classifier for every seed: the measuring instrument stays fixed
MODELS = {  # result key -> table label
    "full_precision": "full precision",
    "fp_start": "full precision at S - Q (binary's start and teacher)",
    "post_training_binarized": "binarized, post-training (no training)",
    "binary_qat_distilled": "binary, QAT + distilled",
}
METRICS = ("denoising_mse", "frechet_distance", "sample_accuracy")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2300, help="optimizer steps of every model (S)")
    parser.add_argument("--qat-steps", type=int, default=800, help="of which QAT steps for the binary model (Q)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per sample (smoke runs: fewer)")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=0, help="workers at a time (0: all seeds on CUDA, 1 on CPU)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop workers still running after this")
    parser.add_argument("--compile-backend", default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA when available")
    parser.add_argument("--out", default="runs/diffusion")
    parser.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)  # internal: one seed
    args = parser.parse_args(argv)
    if not 0 < args.qat_steps < args.steps:
        parser.error(f"need 0 < --qat-steps < --steps, got {args.qat_steps} and {args.steps}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


class DigitsClassifier(nn.Module):
    """Small CNN on 8x8 digits; ``features`` (64-d) is the Fréchet-distance space."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.GELU(),  # (B, 64, 4, 4)
            nn.Flatten(), nn.Linear(64 * 16, 64), nn.GELU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier_net(x, y, device, steps: int, seed: int = CLASSIFIER_SEED) -> DigitsClassifier:
    torch.manual_seed(seed)
    net = DigitsClassifier().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=gen)  # mild noise: robust to sample noise
        loss = nn.functional.cross_entropy(net(xb.to(device)), y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca Cb)^(1/2))`` on float64 features."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigvals = np.linalg.eigvals(cov_a @ cov_b)
    sqrt_trace = np.sqrt(np.clip(eigvals.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * sqrt_trace)


@torch.no_grad()
def features(classifier, x: torch.Tensor, device) -> np.ndarray:
    return classifier.features(x.to(device).float()).double().cpu().numpy()  # (N, 64)


def small_dit() -> DiT:
    return DiT(DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4,
                         class_dropout_prob=LABEL_DROPOUT, num_classes=10, learn_sigma=False))


# ---------------------------------------------------------------- samples and their PNG grid

@torch.no_grad()
def sample_digits(model, schedule, per_class: int, device, seed: int):
    """``per_class`` DDIM samples of every class: images (10 * per_class, 1, 8, 8), labels."""
    labels = torch.arange(10, device=device).repeat_interleave(per_class)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = [ddim_sample(model.eval(), schedule, (len(chunk), 1, 8, 8), chunk, generator=gen)
           for chunk in labels.split(500)]
    return torch.cat(out), labels


def write_png(path: Path, image: np.ndarray) -> None:
    """8-bit grey PNG from a (H, W) uint8 array with the standard library only (zlib, one IDAT chunk)."""
    height, width = image.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + row.tobytes() for row in image)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
                     + chunk(b"IEND", b""))


def save_grid(samples: torch.Tensor, per_class: int, path: Path, value_range, cols: int = 10, zoom: int = 4):
    """Rows = classes 0..9, ``cols`` samples each, pixels mapped from ``value_range`` to 0..255."""
    lo, hi = value_range
    cols = min(cols, per_class)
    grid = samples.float().view(10, per_class, 8, 8)[:, :cols].cpu().numpy()  # (10, cols, 8, 8)
    grid = np.clip((grid - lo) / (hi - lo), 0, 1)
    grid = np.pad(grid, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0.5)  # grey frame per digit
    image = grid.transpose(0, 2, 1, 3).reshape(10 * 10, cols * 10)  # (10 rows x 10 px, cols x 10 px)
    image = np.kron(image, np.ones((zoom, zoom)))
    write_png(path, (255 * image).round().astype(np.uint8))


# ---------------------------------------------------------------- one seed (worker process)

def evaluate_samples(name, model, schedule, classifier, ref_feats, args, seed, value_range) -> dict:
    samples, labels = sample_digits(model, schedule, args.samples_per_class, args.device, seed)
    with torch.no_grad():
        acc = (classifier(samples.float()).argmax(-1) == labels).float().mean().item()
    save_grid(samples, args.samples_per_class, Path(args.out) / f"samples_{name}_seed{seed}.png", value_range)
    feats = features(classifier, samples, args.device)
    return {"frechet_distance": frechet_distance(feats, ref_feats), "sample_accuracy": acc}


def drop_checkpoint(folder: Path) -> None:
    """Keep a run's metrics.jsonl, delete its checkpoint (an intermediate, ~16 MB)."""
    (folder / "checkpoint.pt").unlink(missing_ok=True)


def train_models(args, seed: int, data, diffusion, record) -> dict:
    """The same-budget protocol of the module docstring; returns the four models by result key."""
    train_set, test_set = data
    folder = Path(args.out) / f"seed_{seed}"
    common = dict(batch_size=args.batch_size, seed=seed, progress=False, log_every=50, ema_decay=None,
                  compile_backend=args.compile_backend, device=args.device)
    steps, start_step = args.steps, args.steps - args.qat_steps
    torch.manual_seed(seed)
    fp = small_dit()
    fp_config = TrainConfig(steps=steps, lr=1e-3, warmup_steps=100, out_dir=str(folder / "fp"), **common)
    record("fp_start", train_diffusion(fp, train_set, fp_config, diffusion=diffusion, eval_set=test_set,
                                       stop_at=start_step), steps=start_step)
    start = copy.deepcopy(fp)
    # train_diffusion moves the model's label dropout into its task and sets the model's to 0;
    # put it back so the resumed run and the QAT run drop labels as the first run did.
    fp.y_embedder.dropout_prob = LABEL_DROPOUT
    record("full_precision", train_diffusion(fp, train_set, fp_config, diffusion=diffusion, eval_set=test_set,
                                             resume="auto"), steps=steps)
    drop_checkpoint(folder / "fp")
    student = copy.deepcopy(start)
    student.y_embedder.dropout_prob = LABEL_DROPOUT
    binarize_(student, preset("binary_attention", keep_teacher=False))
    device = torch.device(args.device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # as Trainer.evaluate
        ptq = DiffusionTask(diffusion, 1, 10, eval_set=test_set).evaluate(student, DistContext(device=device))
    record("post_training_binarized", ptq, steps=start_step)
    ptq_copy = copy.deepcopy(student)
    qat_config = TrainConfig(steps=args.qat_steps, lr=3e-4, out_dir=str(folder / "qat"), **common)
    record("binary_qat_distilled", train_diffusion(student, train_set, qat_config, diffusion=diffusion,
                                                   teacher=start, eval_set=test_set), steps=steps)
    drop_checkpoint(folder / "qat")
    return {"full_precision": fp, "fp_start": start, "post_training_binarized": ptq_copy,
            "binary_qat_distilled": student}


def run_seed(args) -> None:
    """Worker: train and evaluate one seed; writes ``seed_<k>/result.json`` after every phase."""
    seed, device = args.worker_seed, torch.device(args.device)
    folder = Path(args.out) / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    result, started = {"seed": seed, "models": {}, "phase_s": {}}, time.perf_counter()

    def record(name, metrics, phase="train", **extra):
        entry = result["models"].setdefault(name, {})
        entry.update(extra)
        if "eval_mse" in metrics:
            entry["denoising_mse"] = metrics["eval_mse"]
        entry.update({k: v for k, v in metrics.items() if k in METRICS})
        result["phase_s"][f"{name}/{phase}"] = round(time.perf_counter() - started, 1)  # since the worker began
        (folder / "result.json").write_text(json.dumps(result, indent=1))

    train_x, train_y = load_digits_tensors("train")
    test_x, test_y = load_digits_tensors("test")
    data = TensorDataset(train_x.to(device), train_y.to(device)), TensorDataset(test_x.to(device), test_y.to(device))
    diffusion = DiffusionConfig(cfg_scale=args.cfg_scale, sample_steps=args.sample_steps)
    models = train_models(args, seed, data, diffusion, record)
    classifier = DigitsClassifier().to(device)
    classifier.load_state_dict(torch.load(Path(args.out) / "classifier.pt", map_location=device))
    classifier.eval()
    ref_feats = features(classifier, test_x, device)
    value_range = (float(train_x.min()), float(train_x.max()))
    schedule = NoiseSchedule(diffusion)
    for name, model in models.items():
        record(name, evaluate_samples(name, model, schedule, classifier, ref_feats, args, seed, value_range),
               phase="samples")
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    (folder / "result.json").write_text(json.dumps(result, indent=1))


# ---------------------------------------------------------------- driver: classifier, workers, table

def worker_command(args, seed: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-seed", str(seed), "--out", args.out,
           "--device", args.device, "--steps", str(args.steps), "--qat-steps", str(args.qat_steps),
           "--batch-size", str(args.batch_size), "--samples-per-class", str(args.samples_per_class),
           "--cfg-scale", str(args.cfg_scale), "--sample-steps", str(args.sample_steps)]
    return cmd + (["--compile-backend", args.compile_backend] if args.compile_backend else [])


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL to the worker's own process group (it was started in a new session)."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_workers(args) -> dict[int, str]:
    """One worker process per seed, ``jobs`` at a time, until done or ``budget_s``; returns each seed's status."""
    jobs = args.jobs or (len(args.seeds) if args.device == "cuda" else 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))
    pending, running, status = list(args.seeds), {}, {}
    deadline = time.monotonic() + args.budget_s
    log.info("diffusion_digits: seeds %s, %d worker(s) at a time, budget %.0f s", args.seeds, jobs, args.budget_s)
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            folder = Path(args.out) / f"seed_{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "result.json").unlink(missing_ok=True)  # never report a previous run's numbers
            handle = open(folder / "worker.log", "w")
            proc = subprocess.Popen(worker_command(args, seed), stdout=handle, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            running[seed] = (proc, handle)
        for seed, (proc, handle) in list(running.items()):
            if proc.poll() is not None:
                handle.close()
                status[seed] = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                log.info("diffusion_digits: seed %d %s", seed, status[seed])
                del running[seed]
        if running and time.monotonic() > deadline:
            for seed, (proc, handle) in running.items():
                stop(proc)
                handle.close()
                status[seed] = f"stopped at the {args.budget_s:.0f} s budget"
            running.clear()
            status.update({seed: "not started (budget)" for seed in pending})
            pending.clear()
        time.sleep(0.5)
    return status


def summarize(results: list[dict]) -> dict:
    """``{model: {metric: {"values", "mean", "std"}}}`` over the seeds that have the value."""
    summary = {}
    for name in MODELS:
        for metric in METRICS:
            values = [r["models"][name][metric] for r in results if metric in r["models"].get(name, {})]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary.setdefault(name, {})[metric] = {"values": values, "mean": statistics.fmean(values),
                                                        "std": std}
    return summary


def cell(entry: dict | None, fmt: str, scale: float, seeds: int) -> str:
    if entry is None:
        return "—"
    text = f"{scale * entry['mean']:{fmt}} ± {scale * entry['std']:{fmt}}"
    return text + (f" (n={len(entry['values'])})" if len(entry["values"]) < seeds else "")


def format_table(summary: dict, results: list[dict], args, info: dict) -> str:
    s, q, n = args.steps, args.qat_steps, len(args.seeds)
    steps = {"full_precision": f"{s}", "fp_start": f"{s - q}", "post_training_binarized": f"{s - q}",
             "binary_qat_distilled": f"{s - q} FP + {q} QAT = {s}"}
    lines = [
        f"Same budget: every model has S = {s} optimizer steps; the binary model is the full-precision run's "
        f"step-{s - q} checkpoint + {q} QAT steps distilled from that checkpoint. Mean ± sample std over seeds "
        f"{', '.join(map(str, args.seeds))}; status: {info['status']}.",
        "",
        f"Digits classifier (seed {CLASSIFIER_SEED}, {args.classifier_steps} steps): test accuracy "
        f"{100 * info['classifier_test_accuracy']:.2f}%. Wall time {info['wall_s']:.0f} s on {info['device']}.",
        "",
        "| model | optimizer steps | denoising MSE (test) | Fréchet distance | classifier accuracy on samples (%) |",
        "|---|---|---|---|---|",
    ]
    for name, label in MODELS.items():
        row = summary.get(name, {})
        lines.append(f"| {label} | {steps[name]} | {cell(row.get('denoising_mse'), '.4f', 1, n)} | "
                     f"{cell(row.get('frechet_distance'), '.1f', 1, n)} | "
                     f"{cell(row.get('sample_accuracy'), '.1f', 100, n)} |")
    lines.append(f"| real digits, train split (floor) | — | — | {info['train_split_frechet_distance']:.1f} | — |")
    lines += ["", "Sample grids (rows = classes 0-9): `samples_<model>_seed<k>.png`; test images in the same "
              "layout: `samples_real_test.png`."]
    lines += ["", "Per seed: denoising MSE / Fréchet distance / sample accuracy (%).", "",
              "| model | " + " | ".join(f"seed {r['seed']}" for r in results) + " |", "|---|" + "---|" * len(results)]
    for name, label in MODELS.items():
        cells = []
        for r in results:
            entry = r["models"].get(name, {})
            mse, fd, acc = (entry.get(metric) for metric in METRICS)
            cells.append(" / ".join("—" if v is None else f"{v:{fmt}}" for v, fmt in
                                    ((mse, ".4f"), (fd, ".1f"), (None if acc is None else 100 * acc, ".1f"))))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prepare_classifier(args) -> dict:
    """Train the digits classifier once, save it for the workers; its test accuracy and the real-data floor."""
    device = torch.device(args.device)
    train_x, train_y = load_digits_tensors("train")
    test_x, test_y = load_digits_tensors("test")
    classifier = train_classifier_net(train_x, train_y, device, args.classifier_steps)
    torch.save(classifier.state_dict(), Path(args.out) / "classifier.pt")
    with torch.no_grad():
        acc = (classifier(test_x.to(device)).argmax(-1).cpu() == test_y).float().mean().item()
    floor = frechet_distance(features(classifier, train_x, device), features(classifier, test_x, device))
    first = torch.cat([torch.nonzero(test_y == c)[:10, 0] for c in range(10)])  # 10 test images per class
    save_grid(test_x[first], 10, Path(args.out) / "samples_real_test.png", (float(train_x.min()), float(train_x.max())))
    return {"classifier_test_accuracy": acc, "train_split_frechet_distance": floor}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker_seed is not None:
        run_seed(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    info = prepare_classifier(args)
    status = run_workers(args)
    results = []
    for seed in args.seeds:
        path = out / f"seed_{seed}" / "result.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
        if status.get(seed) != "done":
            worker_log = out / f"seed_{seed}" / "worker.log"
            tail = "\n".join(worker_log.read_text().splitlines()[-15:]) if worker_log.exists() else ""
            log.error("diffusion_digits: seed %d %s; end of %s:\n%s", seed, status.get(seed), worker_log, tail)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    info.update(status="; ".join(f"seed {k} {status[k]}" for k in sorted(status)), device=device,
                wall_s=time.perf_counter() - started)
    summary = summarize(results)
    table = format_table(summary, results, args, info)
    print(table, flush=True)
    (out / "diffusion_digits.md").write_text(table + "\n")
    record = {**info, "args": vars(args), "summary": summary, "seeds": results}
    (out / "diffusion_digits.json").write_text(json.dumps(record, indent=1))
    return 0 if all(v == "done" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
