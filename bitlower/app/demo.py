"""``bitlower demo``: full precision -> post-training binary -> QAT + distillation, on bundled digits.

The run, in order (every step seeded, so a rerun on the same machine gives the same numbers):

1. Train a small full-precision ViT on scikit-learn's digits (1,437 train / 360 test 8x8 images;
   patch 2 gives a 4x4 grid plus a cls token, N = 17).
2. Post-training binarization: ``bitlower.runtime.binarize_`` with the BinaryAttention preset's
   operator modes (``mean_abs`` weighting, sign scores) and no learned bias, on a copy of the
   trained model, evaluated without any training.
3. QAT + distillation: ``binarize_`` with the full BinaryAttention preset (relative-position
   bias) on another copy, trained with hard distillation from the full-precision model.
4. Attention timing (``demo_timing``): fused kernels vs SDPA on CUDA, the compiled reference vs
   SDPA on CPU.

Outputs in ``out_dir``: ``demo.json`` (results, curves, timing), ``demo_curves.png``, and the
two training runs' folders ``fp/`` and ``qat/`` (``metrics.jsonl``, ``checkpoint.pt``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bitlower.app.demo_report import plot_curves
from bitlower.app.demo_timing import describe_measurement, time_attention
from bitlower.models import load_digits_tensors, vit_tiny
from bitlower.runtime import DistillConfig, TrainConfig, binarize_, preset, train_classifier
from bitlower.runtime.distributed import setup
from bitlower.runtime.tasks import ClassificationTask

log = logging.getLogger(__name__)

RESULTS_NAME = "demo.json"
PLOT_NAME = "demo_curves.png"
RUN_FILES = ("metrics.jsonl", "checkpoint.pt", "checkpoint.pt.integrity.json")  # what each training run writes
PHASES = ("full_precision", "post_training_binary", "qat_distilled")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``run_demo``.

    Args:
        image_size, patch_size: input side and patch side (digits are 8x8; patch 2 -> 4x4 grid).
        embed_dim, depth, num_heads: the ViT's width, blocks and heads (D = embed_dim / heads).
        batch_size: training batch.
        fp_steps, fp_lr: steps and peak learning rate of full-precision training.
        qat_steps, qat_lr: steps and peak learning rate of QAT.
        warmup_steps: linear warmup of both runs.
        eval_every: test-set evaluation interval (the curves' resolution), in steps.
        log_every: training-loss logging interval, in steps.
        distill, distill_alpha: distillation kind (``"hard"``, ``"soft"``, ``"none"``) and weight.
        seed: seeds model initialisation, data order and evaluation.
        timing_shapes: (B, H, N, D) shapes to time; None takes the device's defaults.
        timing_repeats: timed calls per CPU measurement.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        threads: CPU intra-op threads while the demo runs (restored afterwards), or None to keep
            torch's setting. One by default: the demo's tensors are small, and on the 2-core CI
            machine with other jobs running (load ~2.5) 600 full-precision steps took 18 s with one
            thread and 184 s with two (measured). A fixed count also fixes the summation order,
            so results do not depend on the machine's core count.
        progress: show tqdm bars while training.

    Raises:
        ValueError: non-positive steps, or a patch that does not divide the image.

    Example:
        >>> DemoConfig.quick().fp_steps
        6
    """

    image_size: int = 8
    patch_size: int = 2
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    batch_size: int = 64
    fp_steps: int = 600
    fp_lr: float = 2e-3
    qat_steps: int = 400
    qat_lr: float = 1e-3
    warmup_steps: int = 30
    eval_every: int = 50
    log_every: int = 10
    distill: str = "hard"
    distill_alpha: float = 0.5
    seed: int = 0
    timing_shapes: tuple[tuple[int, int, int, int], ...] | None = None
    timing_repeats: int = 10
    device: str | None = None
    threads: int | None = 1
    progress: bool = True

    def __post_init__(self):
        if min(self.fp_steps, self.qat_steps, self.batch_size, self.eval_every, self.log_every) < 1:
            raise ValueError("steps, batch size and intervals must be positive")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        DistillConfig(self.distill, self.distill_alpha)  # validates kind and alpha

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """Seconds-long settings for tests: one block, a few steps, one small timing shape."""
        settings = dict(embed_dim=32, depth=1, num_heads=2, fp_steps=6, qat_steps=4, warmup_steps=0,
                        eval_every=3, log_every=1, timing_shapes=((8, 2, 17, 16),), timing_repeats=3)
        return cls(**{**settings, **overrides})


def build_model(config: DemoConfig) -> nn.Module:
    """The demo's ViT (seeded), sized by ``config``, for 1-channel digits and 10 classes."""
    torch.manual_seed(config.seed)
    return vit_tiny(img_size=config.image_size, patch_size=config.patch_size, in_chans=1, num_classes=10,
                    embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads)


def digits_splits(image_size: int) -> tuple[TensorDataset, TensorDataset]:
    """Normalised digits train and test splits as tensor datasets (batches index in one call)."""
    return TensorDataset(*load_digits_tensors("train", image_size)), TensorDataset(*load_digits_tensors("test", image_size))


def _train_config(config: DemoConfig, steps: int, lr: float, folder: Path) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=config.batch_size, lr=lr, warmup_steps=min(config.warmup_steps, steps - 1),
                       seed=config.seed, eval_every=config.eval_every, log_every=config.log_every,
                       out_dir=str(folder), progress=config.progress, device=config.device)


def read_curves(folder: Path) -> dict[str, list[list[float]]]:
    """``{"train_loss": [[step, loss], ..], "accuracy": [[step, acc], ..]}`` from a run's metrics.jsonl."""
    curves: dict[str, list[list[float]]] = {"train_loss": [], "accuracy": []}
    path = folder / "metrics.jsonl"
    if not path.exists():
        return curves
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            curves["train_loss"].append([record["step"], record["loss"]])
        elif record["split"] == "eval" and "accuracy" in record:
            curves["accuracy"].append([record["step"], record["accuracy"]])
    return curves


def _clear_runs(out: Path) -> None:
    """Remove what an earlier demo left in ``fp/`` and ``qat/`` (metrics files are appended to)."""
    for run in ("fp", "qat"):
        for name in RUN_FILES:
            (out / run / name).unlink(missing_ok=True)


def evaluate(model: nn.Module, test, config: DemoConfig) -> float:
    """Test accuracy of ``model`` (the runtime's classification evaluation)."""
    return ClassificationTask(eval_set=test).evaluate(model, setup(config.device))["accuracy"]


def _with_start(curves: dict, accuracy: float) -> dict:
    """Curves with the evaluation before training as the step-0 point."""
    return {**curves, "accuracy": [[0, accuracy]] + curves["accuracy"]}


def train_full_precision(model: nn.Module, train, test, config: DemoConfig, out: Path) -> dict:
    """Phase 1: cross-entropy training of ``model`` in place; returns accuracy, curves, seconds."""
    start = time.perf_counter()
    initial = evaluate(model, test, config)
    cfg = _train_config(config, config.fp_steps, config.fp_lr, out / "fp")
    metrics = train_classifier(model, train, cfg, eval_set=test)
    return {"accuracy": metrics["accuracy"], "steps": config.fp_steps, "seconds": time.perf_counter() - start,
            "curves": _with_start(read_curves(out / "fp"), initial)}


def post_training_binary(model: nn.Module, test, config: DemoConfig) -> dict:
    """Phase 2: a binarized copy of the trained model (mean_abs, no learned bias), evaluated untrained."""
    start = time.perf_counter()
    student = copy.deepcopy(model)
    binarize_config = preset("binary_attention", bias="none", keep_teacher=False)
    report = binarize_(student, binarize_config)
    accuracy = evaluate(student, test, config)
    return {"accuracy": accuracy, "steps": 0, "seconds": time.perf_counter() - start,
            "binarized_modules": len(report.binarized), "config": binarize_config.to_dict(),
            "curves": {"train_loss": [], "accuracy": [[0, accuracy]]}}


def qat_distilled(model: nn.Module, train, test, config: DemoConfig, out: Path) -> dict:
    """Phase 3: the BinaryAttention preset on a copy, trained with distillation from ``model``."""
    start = time.perf_counter()
    student = copy.deepcopy(model)
    binarize_config = preset("binary_attention")
    report = binarize_(student, binarize_config)
    distill = DistillConfig(config.distill, config.distill_alpha)
    initial = evaluate(student, test, config)
    cfg = _train_config(config, config.qat_steps, config.qat_lr, out / "qat")
    metrics = train_classifier(student, train, cfg, teacher=report.teacher, distill=distill, eval_set=test,
                               extra_config=binarize_config.to_dict())
    return {"accuracy": metrics["accuracy"], "steps": config.qat_steps, "seconds": time.perf_counter() - start,
            "binarized_modules": len(report.binarized), "learned_parameters_added": report.parameters_added,
            "config": binarize_config.to_dict(), "distill": asdict(distill),
            "curves": _with_start(read_curves(out / "qat"), initial)}


def _environment(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Run the body with ``torch.set_num_threads(threads)`` (None: unchanged), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_demo(config: DemoConfig | None = None, out_dir: str | Path = "runs/demo") -> dict:
    """Run the demo (module docstring) and write ``demo.json`` and ``demo_curves.png`` into ``out_dir``.

    Args:
        config: a ``DemoConfig`` (default settings when None).
        out_dir: output folder, created if missing; earlier demo runs in it are replaced.

    Returns:
        the results written to ``demo.json``: ``phases`` (per phase: accuracy, steps, seconds,
        curves), ``timing`` (what was measured and one row per shape), ``model``, ``data``,
        ``environment``, ``config``, ``wall_seconds`` and the output ``files``.

    Example:
        >>> results = run_demo(DemoConfig.quick(), "/tmp/bitlower-demo")  # doctest: +SKIP
        >>> sorted(results["phases"])
        ['full_precision', 'post_training_binary', 'qat_distilled']
    """
    config = config or DemoConfig()
    with cpu_threads(config.threads):
        return _run(config, Path(out_dir))


def _run(config: DemoConfig, out: Path) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _clear_runs(out)
    device = setup(config.device).device
    train, test = digits_splits(config.image_size)
    model = build_model(config).to(device)
    phases = {"full_precision": train_full_precision(model, train, test, config, out)}
    phases["post_training_binary"] = post_training_binary(model, test, config)
    phases["qat_distilled"] = qat_distilled(model, train, test, config, out)
    rows = time_attention(config.timing_shapes, device, repeats=config.timing_repeats)
    grid = config.image_size // config.patch_size
    results = {
        "phases": phases,
        "timing": {"measured": describe_measurement(device, config.timing_repeats), "rows": [r.to_dict() for r in rows]},
        "model": {"kind": "ViT", "embed_dim": config.embed_dim, "depth": config.depth, "heads": config.num_heads,
                  "head_dim": config.embed_dim // config.num_heads, "tokens": grid * grid + 1,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "data": {"name": "digits", "train": len(train), "test": len(test), "image_size": config.image_size},
        "environment": _environment(device),
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
    }
    results["files"] = {"results": str(out / RESULTS_NAME), "plot": str(out / PLOT_NAME)}
    plot_curves(results, out / PLOT_NAME)
    results["wall_seconds"] = time.perf_counter() - start
    (out / RESULTS_NAME).write_text(json.dumps(results, indent=2) + "\n")
    log.info("bitlower: demo results written to %s", out / RESULTS_NAME)
    return results
