"""Segmentation with binary attention on digit canvases: full precision vs every method, 3 seeds.

Question: does BinaryFormer's ordering (seed 001, Table 1: Dice base 64.78, sign 61.68, sign
stop-grad 57.47, Hamming 65.33, i.e. Hamming ≈ base > sign > stop-grad) hold for a ViT-S/8 +
convolutional decoder on data that ships with the project, and what does a binary training step
cost against a full-precision one?

Data: digit canvases (``bitlower.models.digit_canvases``), 256 x 256, 11 classes (background +
digits 0-9), 1,024 train canvases (train-split digits) and 128 test canvases (test-split digits).
Model: ``seg_vit_small_patch8`` as in the seed's A.1: ViT-S/8 (12 blocks, C 384, 6 heads), value
channels reduced 4x (Dv 16), decoder width 1024, trained from a random init (no DINO weights here):
N = 1024 patch tokens + cls at 256 x 256. Every method trains the same recipe from the same init
(the seed's comparison): AdamW lr 3e-4, 100 warm-up steps, cosine, batch 12 (the seed's), bf16
autocast on CUDA, cross-entropy. Rows: ``base`` (full precision, compiled with Inductor) and the
presets ``sign_ste``, ``sign_stopgrad``, ``hamming``, ``hamming_g``, ``hamming_b``,
``binary_attention`` (compiled with ``backend="bitlower"``: fused kernels on CUDA; a run whose
operator fell back to the reference says so in the table, from ``bitlower.counters["fallback"]``).

Metrics on the 128 test canvases: mean Dice over the 10 digit classes (background left out, as the
seed reports foreground Dice) and mIoU over all 11 classes, mean ± sample std over seeds. Training
steps/s are timed after ``--warmup-steps`` (compilation excluded), CUDA synchronised. The ordering
check: "Hamming ≈ base" means |Dice_hamming - Dice_base| <= the larger of the two stds (and at least
0.01); ">" compares means.

Each (seed, method) runs in its own worker process, ``--jobs`` at a time, round-robin over the
visible GPUs; ``--budget-s`` stops what is unfinished and the table is written from what finished.

Run (GPU machine, one command): ``python benchmarks/segmentation_digits.py --out $OUT``.
Wall time not measured (no GPU was lent when this was written); ``--budget-s`` (540) bounds it.
CPU smoke run (tiny model, 2 steps per run, numbers meaningless; ``--jobs 0`` runs everything in one
process): ``python benchmarks/segmentation_digits.py --smoke --seeds 0 1 --jobs 0 --out runs/seg_smoke``.

Writes ``segmentation_digits.{json,md}``, ``masks_seed<k>.png`` (rows: test canvases; columns:
image, ground truth, each method's prediction) and ``records/<method>_seed<k>.{json,npy}``.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

METHODS = ("base", "sign_ste", "sign_stopgrad", "hamming", "hamming_g", "hamming_b", "binary_attention")
SHOWN = 4  # test canvases drawn in the PNG
# 11 class colours: background black, digits 0-9 on distinct hues.
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.uint8)
SMOKE = dict(size=96, train=8, test=4, steps=2, warmup_steps=1, batch_size=2, encoder_args=dict(
    depth=1, embed_dim=32, num_heads=2, decoder_width=32))
GPU = dict(size=256, train=1024, test=128, steps=1200, warmup_steps=20, batch_size=12, encoder_args={})

log = logging.getLogger("segmentation_digits")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 1200; smoke 2)")
    p.add_argument("--jobs", type=int, default=None,
                   help="workers at a time (default: 3 per GPU, 1 on CPU); 0: all runs in this process")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop unfinished workers after this many seconds")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole pipeline")
    p.add_argument("--out", default="runs/segmentation_digits")
    p.add_argument("--worker", nargs=2, metavar=("SEED", "METHOD"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings(args) -> dict:
    base = dict(SMOKE if args.smoke else GPU)
    if args.steps is not None:
        base["steps"] = args.steps
    base["device"] = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    return base


# ---------------------------------------------------------------- one (seed, method): worker process

@functools.lru_cache(maxsize=1)
def canvases(size: int, train: int, test: int):
    """The train and test canvases (canvas seed 0 for every run; the run's seed sets init and order)."""
    from bitlower.models import digit_canvases

    return digit_canvases("train", size, train, seed=0), digit_canvases("test", size, test, seed=0)


def run_one(args, seed: int, method: str) -> dict:
    import bitlower
    from bitlower.models import seg_vit
    from bitlower.runtime import SegmentationTask, TrainConfig, binarize_, preset
    from bitlower.runtime.trainer import Trainer

    cfg = settings(args)
    train, test = canvases(cfg["size"], cfg["train"], cfg["test"])
    torch.manual_seed(seed)
    model = seg_vit("small", img_size=cfg["size"], in_chans=1, num_classes=train.num_classes, value_reduction=4,
                    **cfg["encoder_args"])
    if method != "base":
        binarize_(model, preset(method, keep_teacher=False))
    backend = None if cfg["device"] == "cpu" else ("inductor" if method == "base" else "bitlower")
    warmup = min(100, cfg["steps"] // 10)  # 100 at the default 1200 steps
    config = TrainConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=3e-4, warmup_steps=warmup,
                         seed=seed, progress=False, log_every=0, device=cfg["device"], compile_backend=backend)
    trainer = Trainer(model, SegmentationTask(train.num_classes, eval_set=test, eval_batch=16), train, config)
    bitlower.counters.clear()
    sync = torch.cuda.synchronize if cfg["device"] == "cuda" else (lambda: None)
    started = None
    for step in range(cfg["steps"]):
        if step == cfg["warmup_steps"]:
            sync()
            started = time.perf_counter()
        losses = trainer.train_step()
    sync()
    timed = cfg["steps"] - cfg["warmup_steps"]
    steps_per_s = timed / (time.perf_counter() - started) if started is not None and timed > 0 else None
    metrics = trainer.evaluate()
    with torch.no_grad(), trainer.autocast:
        x, _ = test.get_batch(torch.arange(min(SHOWN, len(test))))
        pred = trainer.model.eval()(x.to(trainer.ctx.device)).argmax(1).cpu().numpy().astype(np.uint8)
    return {"seed": seed, "method": method, "steps": cfg["steps"], "batch": cfg["batch_size"], "size": cfg["size"],
            "device": torch.cuda.get_device_name() if cfg["device"] == "cuda" else "cpu", "backend": backend,
            "final_loss": losses["loss"], "steps_per_s": steps_per_s, "fallbacks": dict(bitlower.counters["fallback"]),
            "mean_dice": metrics["mean_dice"], "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "dice_per_class": metrics["dice_per_class"]}, pred


def run_and_save(args, seed: int, method: str) -> None:
    """One (seed, method): its record JSON and its first test predictions (uint8 .npy) under ``records/``."""
    record, pred = run_one(args, seed, method)
    folder = Path(args.out) / "records"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{method}_seed{seed}.npy", pred)
    (folder / f"{method}_seed{seed}.json").write_text(json.dumps(record, indent=1))


def run_in_process(args) -> dict[str, str]:
    """``--jobs 0``: every (seed, method) one after the other in this process (no budget)."""
    status = {}
    for seed in args.seeds:
        for method in args.methods:
            (Path(args.out) / "records" / f"{method}_seed{seed}.json").unlink(missing_ok=True)
            run_and_save(args, seed, method)
            status[f"{method}_seed{seed}"] = "done"
    return status


# ---------------------------------------------------------------- orchestration

def _command(args, seed: int, method: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(seed), method, "--out", args.out]
    return cmd + (["--smoke"] if args.smoke else []) + (["--steps", str(args.steps)] if args.steps else [])


def run_workers(args) -> dict[str, str]:
    """Every (seed, method) as a worker, ``jobs`` at a time; returns each one's status."""
    gpus = torch.cuda.device_count() if not args.smoke else 0
    jobs = args.jobs or (3 * gpus if gpus else 1)
    pending = [(s, m) for s in args.seeds for m in args.methods]
    running, status, started, launched = {}, {}, time.monotonic(), 0
    records = Path(args.out) / "records"
    records.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    while pending or running:
        while pending and len(running) < jobs:
            seed, method = pending.pop(0)
            key = f"{method}_seed{seed}"
            (records / f"{key}.json").unlink(missing_ok=True)  # never report a previous run's numbers
            env = dict(os.environ, OMP_NUM_THREADS=threads)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(launched % gpus)  # round-robin over the GPUs
            launched += 1
            handle = open(records / f"{key}.log", "w")
            proc = subprocess.Popen(_command(args, seed, method), stdout=handle, stderr=subprocess.STDOUT, env=env)
            running[key] = (proc, handle)
        for key, (proc, handle) in list(running.items()):
            if proc.poll() is not None:
                handle.close()
                status[key] = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                del running[key]
        if running and time.monotonic() - started > args.budget_s:
            for key, (proc, handle) in running.items():
                proc.kill()
                proc.wait()
                handle.close()
                status[key] = f"stopped at the {args.budget_s:.0f} s budget"
            running.clear()
            status.update({f"{m}_seed{s}": "not started (budget)" for s, m in pending})
            pending.clear()
        time.sleep(0.2)
    return status


# ---------------------------------------------------------------- report

def summarize(records: list[dict]) -> dict:
    """``{method: {metric: {"values", "mean", "std"}}}`` over the seeds that finished."""
    out = {}
    for method in METHODS:
        rows = [r for r in records if r["method"] == method]
        if not rows:
            continue
        entry = {}
        for metric in ("mean_dice", "miou", "steps_per_s"):
            values = [r[metric] for r in rows if r[metric] is not None]
            entry[metric] = {"values": values, "mean": statistics.fmean(values) if values else None,
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        entry["fallbacks"] = sum(sum(r["fallbacks"].values()) for r in rows)
        out[method] = entry
    return out


def ordering(summary: dict) -> dict:
    """The seed's ordering, claim by claim: Hamming ≈ base, base > sign, sign > stop-grad (see module)."""
    def dice(m):
        return summary.get(m, {}).get("mean_dice", {})

    checks = {}
    base, ham, sign, sg = dice("base"), dice("hamming"), dice("sign_ste"), dice("sign_stopgrad")
    if base.get("mean") is not None and ham.get("mean") is not None:
        tol = max(base["std"], ham["std"], 0.01)
        checks["hamming ≈ base"] = abs(ham["mean"] - base["mean"]) <= tol
    if base.get("mean") is not None and sign.get("mean") is not None:
        checks["base > sign"] = base["mean"] > sign["mean"]
    if sign.get("mean") is not None and sg.get("mean") is not None:
        checks["sign > stop-grad"] = sign["mean"] > sg["mean"]
    checks["holds"] = len(checks) == 3 and all(checks.values())
    return checks


def _cell(entry, scale=100.0, fmt="{:.2f}"):
    if not entry or entry["mean"] is None:
        return "—"
    text = fmt.format(entry["mean"] * scale)
    return text + (" ± " + fmt.format(entry["std"] * scale) if len(entry["values"]) > 1 else "") + \
        f" (n={len(entry['values'])})"


def format_table(summary: dict, checks: dict, status: dict, cfg: dict) -> str:
    lines = [f"Segmentation on digit canvases ({cfg['size']}x{cfg['size']}, N = {(cfg['size'] // 8) ** 2} patch "
             f"tokens), {cfg['steps']} steps, batch {cfg['batch_size']}, device {cfg['device']}", "",
             "| method | mean Dice % | mIoU % | steps/s | steps/s vs base | fallbacks |", "|---|---|---|---|---|---|"]
    base_sps = summary.get("base", {}).get("steps_per_s", {}).get("mean")
    for method, entry in summary.items():
        sps = entry["steps_per_s"]["mean"]
        ratio = f"{sps / base_sps:.2f}x" if sps and base_sps else "—"
        lines.append(f"| {method} | {_cell(entry['mean_dice'])} | {_cell(entry['miou'])} | "
                     f"{_cell(entry['steps_per_s'], 1.0, '{:.1f}')} | {ratio} | {entry['fallbacks']} |")
    claims = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items() if k != "holds")
    lines += ["", f"Seed ordering (Hamming ≈ base > sign > stop-grad) holds: {'yes' if checks['holds'] else 'no'} "
                  f"({claims or 'rows missing'})."]
    bad = {k: v for k, v in status.items() if v != "done"}
    if bad:
        lines.append("Unfinished: " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())))
    return "\n".join(lines) + "\n"


def write_rgb_png(path: Path, image: np.ndarray) -> None:
    """8-bit RGB PNG from a (H, W, 3) uint8 array with the standard library only (zlib, one IDAT chunk)."""
    height, width, _ = image.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + row.tobytes() for row in image)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6))
                     + chunk(b"IEND", b""))


def mask_png(args, cfg: dict, seed: int) -> Path | None:
    """Rows: the first test canvases; columns: image, ground truth, each finished method's prediction."""
    from bitlower.models import digit_canvases

    records = Path(args.out) / "records"
    preds = [(m, np.load(records / f"{m}_seed{seed}.npy")) for m in args.methods
             if (records / f"{m}_seed{seed}.npy").is_file()]
    if not preds:
        return None
    test = digit_canvases("test", cfg["size"], SHOWN, seed=0)  # the same first canvases the workers drew
    grey = test.images[:, 0].numpy()  # (S, H, W) uint8
    rows = []
    for i in range(min(SHOWN, preds[0][1].shape[0])):
        cells = [np.repeat(grey[i][..., None], 3, -1), PALETTE[test.masks[i].numpy()]]
        cells += [PALETTE[np.clip(p[i], 0, len(PALETTE) - 1)] for _, p in preds]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=128) for c in cells], 1))
    path = Path(args.out) / f"masks_seed{seed}.png"
    write_rgb_png(path, np.concatenate(rows, 0))
    (Path(args.out) / f"masks_seed{seed}.txt").write_text("columns: image, ground truth, " +
                                                         ", ".join(m for m, _ in preds) + "\n")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker is not None:
        run_and_save(args, int(args.worker[0]), args.worker[1])
        return 0
    cfg = settings(args)
    started = time.perf_counter()
    status = run_in_process(args) if args.jobs == 0 else run_workers(args)
    records = [json.loads(p.read_text()) for p in sorted((Path(args.out) / "records").glob("*_seed*.json"))]
    summary = summarize(records)
    checks = ordering(summary)
    table = format_table(summary, checks, status, cfg)
    pngs = [str(p) for p in (mask_png(args, cfg, s) for s in args.seeds) if p is not None]
    result = {"settings": {k: v for k, v in cfg.items()}, "status": status, "summary": summary, "ordering": checks,
              "records": records, "pngs": pngs, "wall_s": round(time.perf_counter() - started, 1)}
    out = Path(args.out)
    (out / "segmentation_digits.json").write_text(json.dumps(result, indent=1))
    (out / "segmentation_digits.md").write_text(table)
    print(table)
    return 0 if all(v == "done" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
