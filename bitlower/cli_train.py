"""``bitlower train`` and the model and data helpers it shares with ``bitlower explain``.

A registered model name decides the task (``dit_*``: diffusion, the rest: classification) and
which config fields the data fills in (image size, channels, classes); ``--model-arg`` overrides
any config field after that.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from bitlower.cli_vq3d import TRAIN_TASKS, add_vq3d_train_args, run_vq3d_task
from bitlower.models import create_model, list_models, load_dataset
from bitlower.runtime import (
    PRESETS,
    DiffusionConfig,
    DistillConfig,
    TrainConfig,
    binarize_,
    preset,
    read_checkpoint,
    train_classifier,
    train_diffusion,
)

DEFAULT_MODEL = "vit_tiny_patch8"
# Digits are 8x8; `train` upsamples them to 32 so that the default patch-8 ViT sees a 4x4 grid.
DEFAULT_IMAGE_SIZES = {"digits": 32}
# Datasets up to this size (as float32) are converted once into tensors: per-item conversion
# made a digits training step of a small ViT take ~600 ms instead of ~45 ms (measured, 2-core CPU).
# CIFAR-10's train split is 614 MB as float32.
TENSOR_DATA_MAX_BYTES = 1 << 30


class UsageError(Exception):
    """A bad command-line argument, reported as one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help states it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a Python literal (``2``, ``0.5``, ``True``, ``(4, 4)``) or a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


# ---------------------------------------------------------------- models and data (train, explain)

# Config fields that the data decides, by model family (registry name prefix; "" = the rest).
DATA_FIELDS = {"dit_": ("input_size", "in_channels", "num_classes"), "": ("img_size", "in_chans", "num_classes")}
TASKS = {"dit_": "diffusion", "": "classification"}


def family(name: str) -> str:
    """The ``DATA_FIELDS``/``TASKS`` key of a registered model name."""
    return next(prefix for prefix in DATA_FIELDS if name.startswith(prefix))


def check_model_name(name: str) -> None:
    """KeyError naming the closest registered names, unless ``name`` is registered."""
    if name not in list_models():
        create_model(name)  # raises KeyError naming the closest registered names


def build_model(name: str, model_args: list, data_values: tuple | None = None):
    """``create_model(name, ...)``: data-decided fields first, then ``--model-arg`` overrides.

    Raises:
        KeyError: an unknown name.
        UsageError: a ``--model-arg`` that is no field of the model's config.
    """
    check_model_name(name)
    overrides = dict(zip(DATA_FIELDS[family(name)], data_values)) if data_values else {}
    overrides.update(dict(model_args))
    try:
        return create_model(name, **overrides)
    except TypeError as err:  # an unknown config field from --model-arg
        raise UsageError(f"model {name!r}: {err}") from err


def example_inputs(model, batch: int) -> tuple:
    """One call's inputs: images (B, C, H, W), plus timesteps and labels (B,) for a DiT."""
    cfg = model.config
    if hasattr(cfg, "in_channels"):  # DiT: model(x, t, y)
        size = cfg.input_size if isinstance(cfg.input_size, tuple) else (cfg.input_size, cfg.input_size)
        zeros = torch.zeros(batch, dtype=torch.long)
        return torch.randn(batch, cfg.in_channels, *size), zeros, zeros
    size = cfg.img_size if isinstance(cfg.img_size, tuple) else (cfg.img_size, cfg.img_size)
    return (torch.randn(batch, cfg.in_chans, *size),)


def _datasets(spec: str, image_size: int | None):
    """``[(train, train_full), (test, test_full)]``: each split as a tensor dataset where it fits
    in memory (normalised and resized once, not every batch), and the dataset it came from (its attributes).

    Raises:
        UsageError: the data path does not exist.
    """
    kind, sep, path = spec.partition(":")
    folder = Path(path if sep and kind in ("cifar10", "cifar100", "imagefolder") else spec)
    if spec != "digits" and not folder.exists():
        raise UsageError(f"data path not found: {folder}")
    size = image_size if image_size is not None else DEFAULT_IMAGE_SIZES.get(spec)
    splits = []
    for split in ("train", "test"):
        if split == "test" and not (folder / "test").is_dir() and (folder / "val").is_dir():
            split = "val"  # image folders often name their evaluation split so
        ds = load_dataset(spec, split, size)
        x, _ = ds[0]
        in_memory = callable(getattr(ds, "tensors", None))  # image folders read files per item
        if in_memory and len(ds) * x.numel() * x.element_size() <= TENSOR_DATA_MAX_BYTES:
            splits.append((TensorDataset(*ds.tensors()), ds))
        else:  # too large to hold as float32: converted per batch (ImageDataset.get_batch)
            splits.append((ds, ds))
    return splits


def add_model_args(p, model_help: str, image_help: str) -> None:
    """``--model``, ``--list-models``, ``--image-size`` and ``--model-arg`` of ``train`` and ``explain``."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{model_help} (see --list-models)")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    p.add_argument("--image-size", type=int, default=None, help=image_help)
    p.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. depth=2 embed_dim=64 patch_size=4")


# ---------------------------------------------------------------- train

def _binarize_config(args):
    if args.preset == "none":
        return None
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: none, {', '.join(sorted(PRESETS))}")
    return preset(args.preset)


def _load_init(model, path: str) -> None:
    try:
        model.load_state_dict(read_checkpoint(path)["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"--init {path} does not fit this full-precision model: {first}") from err


def _resume_path(args) -> str | None:
    if args.resume is None:
        return None
    path = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from: {path}")
    return str(path)


def print_models() -> int:
    """Print the registered model names (``--list-models``)."""
    print("\n".join(list_models()))
    return 0


def run_train(args) -> int:
    """``bitlower train``: see ``add_train_parser``."""
    if args.list_models:
        return print_models()
    if args.task != "auto":
        return run_vq3d_task(args, _resume_path(args))
    check_model_name(args.model)
    task = TASKS[family(args.model)]
    binarize = _binarize_config(args)  # the cheap checks first: names and paths
    resume = _resume_path(args)
    if args.init and not Path(args.init).is_file():
        raise UsageError(f"--init checkpoint not found: {args.init}")
    (train, full), (test, _) = _datasets(args.data, args.image_size)
    torch.manual_seed(args.seed)  # model initialisation; the trainer seeds the rest
    model = build_model(args.model, args.model_arg, (full.image_size, full.in_chans, full.num_classes))
    if args.init:
        _load_init(model, args.init)
    distill = args.distill if args.distill != "auto" else ("hard" if args.init and binarize else "none")
    teacher = None
    if binarize is not None:
        teacher = binarize_(model, binarize).teacher
    if distill != "none" and teacher is None:
        raise UsageError("--distill needs a binarized model (--preset) started from --init full-precision weights")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                         seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         log_every=args.log_every,
                         out_dir=args.out, progress=not args.no_progress, device=args.device,
                         compile_backend=args.compile_backend)
    extra = {"model": args.model, "model_args": [[k, repr(v)] for k, v in args.model_arg], "data": args.data,
             "image_size": list(full.image_size), "preset": args.preset,
             "binarize": None if binarize is None else binarize.to_dict(), "init": args.init}
    common = dict(eval_set=test, extra_config=extra, resume=resume, stop_at=args.stop_after,
                  teacher=teacher if distill != "none" else None)
    if task == "diffusion":
        metrics = train_diffusion(model, train, config, diffusion=DiffusionConfig(distill_alpha=args.distill_alpha),
                                  **common)
    else:
        metrics = train_classifier(model, train, config, distill=DistillConfig(distill, args.distill_alpha), **common)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{task} {args.model} ({args.preset}) on {args.data}: {shown}")
    print(f"checkpoint {Path(args.out) / 'checkpoint.pt'}, metrics {Path(args.out) / 'metrics.jsonl'}")
    return 0


def add_train_parser(sub) -> None:
    """Register the ``train`` subcommand on the subparsers ``sub``."""
    p = sub.add_parser(
        "train", help="train a registered model (classification, or diffusion for DiT), binary or full precision",
        description="Trains any registered model: classifiers (ViT/DeiT, pixel transformer) with cross-entropy, "
                    "DiT with the DDPM noise-prediction loss. --preset binarizes the attention first (QAT); "
                    "--init starts from a full-precision checkpoint of this command (--preset none), which "
                    "then is the distillation teacher. Writes checkpoint.pt and metrics.jsonl into --out.",
        formatter_class=HelpFormatter)
    add_model_args(p, "registered model name; dit_* models train as diffusion",
                   "input side; default: the data's own size (digits: 32, upsampled from 8)")
    p.add_argument("--task", default="auto", choices=("auto", *TRAIN_TASKS),
                   help="auto: by --model (dit_*: diffusion, else classification); vqae3d, absorbing: the 3D VQ "
                        "diffusion tasks (see their options below)")
    p.add_argument("--data", default="digits",
                   help="'digits' (bundled), 'cifar10:<path>', 'cifar100:<path>', 'imagefolder:<path>' or a folder")
    p.add_argument("--preset", default="binary_attention",
                   help="binarization preset (binary_attention, hamming, hamming_g, hamming_b, sign_ste, "
                        "sign_stopgrad) or 'none' for full precision")
    p.add_argument("--init", default=None, help="full-precision checkpoint to start from (and distill from)")
    p.add_argument("--distill", choices=("auto", "none", "hard", "soft"), default="auto",
                   help="distillation from the --init model; auto: hard with --init and a preset, else none; "
                        "diffusion distills by MSE to the teacher's prediction for any kind but none")
    p.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the distillation term")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of the whole run")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (warmup + cosine)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end only)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: at the end only)")
    p.add_argument("--log-every", type=int, default=10, help="write the training loss to metrics.jsonl every N steps")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this step, writing a checkpoint; continue later with --resume")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (without a value: <out>/checkpoint.pt)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend of the training model, e.g. bitlower")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: CUDA when available)")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_vq3d_train_args(p)
    p.set_defaults(func=run_train)
