"""End to end: a small ViT trained in full precision, binarized post-training, then QAT + distilled.

Question: does the runtime give a binary-attention ViT as accurate as the full-precision one, and
what does a training step cost under ``torch.compile(backend="bitlower")`` against the full-precision
compiled model?

Data: scikit-learn digits upsampled to 32x32 (1,437 train / 360 test images). Model: ViT, patch 4
(8x8 grid + cls = 65 tokens), width 192, 6 blocks, 3 heads (D = 64). Stages:

1. full precision, AdamW, ``--fp-steps`` steps, compiled with Inductor;
2. post-training binarization (BinaryAttention preset, no training): accuracy only;
3. QAT with hard distillation from the stage-1 model, ``--qat-steps`` steps, compiled with the
   bitlower backend (Inductor with a note when that backend is not importable).

Steps/s are timed separately for both compiled models on the same batch: ``--time-steps`` steps after
``--warmup-steps`` (compilation excluded), CUDA synchronised. Results go to stdout and, when ``$OUT`` is
set, to ``$OUT/runtime_e2e.json``.

Run (H100, about 3 minutes): ``python benchmarks/runtime_e2e.py``
CPU smoke run (seconds, numbers meaningless): ``python benchmarks/runtime_e2e.py --smoke``
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import bitlower
from bitlower.models import load_digits_tensors, vit_tiny
from bitlower.runtime import DistillConfig, TrainConfig, binarize_, preset
from bitlower.runtime.tasks import ClassificationTask
from bitlower.runtime.trainer import Trainer

log = logging.getLogger("runtime_e2e")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp-steps", type=int, default=1500)
    parser.add_argument("--qat-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--time-steps", type=int, default=200)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script end to end")
    return parser.parse_args()


def bitlower_backend_or_inductor() -> tuple[str, str | None]:
    """``("bitlower", None)`` when the backend resolves, else ``("inductor", note)``."""
    try:
        torch._dynamo.lookup_backend("bitlower")
        return "bitlower", None
    except Exception as err:  # the backend is not installed or fails to import
        return "inductor", f"bitlower backend not importable ({type(err).__name__}: {err}); QAT compiled with inductor"


def digits(image_size: int, device):
    data = {}
    for split in ("train", "test"):
        x, y = load_digits_tensors(split, image_size=image_size)
        data[split] = TensorDataset(x.to(device), y.to(device))
    return data["train"], data["test"]


def train(model, data, config: TrainConfig, teacher=None, distill=DistillConfig("none")):
    task = ClassificationTask(distill, eval_set=data[1])
    trainer = Trainer(model, task, data[0], config, teacher=teacher)
    return trainer.run()


def steps_per_second(model, data, config: TrainConfig, warmup: int, timed: int, teacher=None, distill=None) -> float:
    """Optimizer steps per second of a compiled copy of ``model`` after ``warmup`` steps."""
    trainer = Trainer(copy.deepcopy(model), ClassificationTask(distill or DistillConfig("none")), data[0], config,
                      teacher=teacher)
    for _ in range(warmup):
        trainer.train_step()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(timed):
        trainer.train_step()
    sync()
    return timed / (time.perf_counter() - start)


def evaluate(model, data) -> float:
    device = next(model.parameters()).device
    ctx = bitlower.runtime.distributed.DistContext(device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return ClassificationTask(eval_set=data[1]).evaluate(model, ctx)["accuracy"]


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.smoke:
        args.fp_steps, args.qat_steps, args.warmup_steps, args.time_steps, args.depth = 30, 20, 2, 5, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    data = digits(32, device)
    torch.manual_seed(0)
    model = vit_tiny(img_size=32, patch_size=4, in_chans=1, num_classes=10, depth=args.depth).to(device)
    fp_backend = None if args.smoke else "inductor"
    qat_backend, note = (None, None) if args.smoke else bitlower_backend_or_inductor()
    if note:
        print(f"NOTE: {note}")
    common = dict(batch_size=args.batch_size, weight_decay=0.05, progress=False, log_every=0, device=device.type)

    fp_cfg = TrainConfig(steps=args.fp_steps, lr=1e-3, warmup_steps=args.fp_steps // 20, compile_backend=fp_backend,
                         **common)
    fp = train(model, data, fp_cfg)
    timing_cfg = TrainConfig(steps=10 ** 6, lr=1e-4, compile_backend=fp_backend, **common)
    fp_sps = steps_per_second(model, data, timing_cfg, args.warmup_steps, args.time_steps)

    student = copy.deepcopy(model)
    report = binarize_(student, preset("binary_attention"))
    ptq_acc = evaluate(student, data)

    qat_cfg = TrainConfig(steps=args.qat_steps, lr=5e-4, warmup_steps=args.qat_steps // 20,
                          compile_backend=qat_backend, **common)
    distill = DistillConfig("hard", alpha=0.5)
    qat = train(student, data, qat_cfg, teacher=report.teacher, distill=distill)
    timing_cfg = TrainConfig(steps=10 ** 6, lr=1e-4, compile_backend=qat_backend, **common)
    qat_sps = steps_per_second(student, data, timing_cfg, args.warmup_steps, args.time_steps,
                               teacher=report.teacher, distill=distill)

    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": f"ViT width 192, depth {args.depth}, 3 heads, patch 4, 32x32 digits (65 tokens)",
        "fp_accuracy": fp["accuracy"],
        "post_training_binarized_accuracy": ptq_acc,
        "qat_distilled_accuracy": qat["accuracy"],
        "fp_steps_per_s": fp_sps,
        "qat_steps_per_s": qat_sps,
        "qat_over_fp_speed": qat_sps / fp_sps,
        "fp_backend": fp_backend,
        "qat_backend": qat_backend,
        "backend_note": note,
        "fallbacks": dict(bitlower.counters["fallback"]),
        "steps": {"fp": args.fp_steps, "qat": args.qat_steps, "batch": args.batch_size},
    }
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "runtime_e2e.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
