"""``bitlower train --task segmentation``: the options and the one function that builds and trains.

One ``TrainTask`` of ``train_tasks`` (``SEGMENTATION``): ``add_segmentation_args(parser)`` adds the
task's own options, ``run_segmentation(args, folder, resume)`` builds
the data, the model (optionally from a timm-named ViT checkpoint for the encoder, with the
seed's re-initialisation), binarizes it with the preset, and trains it with ``train_segmentation``.
The options shared with the other tasks (``--model``, ``--data``, ``--preset``, ``--init``,
``--resume``, ``--steps`` ...) are those of ``bitlower train``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from bitlower.runtime import DistillConfig, binarize_
from bitlower.runtime.seg_loss import SegLossConfig
from bitlower.runtime.seg_task import train_segmentation

from .arguments import UsageError

log = logging.getLogger(__name__)

DEFAULT_SEG_MODEL = "seg_vit_small_patch8"
REINIT_CHOICES = {"seed": (True, 4), "attention": (True, None), "none": (False, None)}


def add_segmentation_args(p) -> None:
    """The segmentation options of ``bitlower train`` (ignored by the other tasks)."""
    g = p.add_argument_group("segmentation (--task segmentation or a seg_vit_* model)")
    g.add_argument("--dice-weight", type=float, default=0.0, help="weight of the soft Dice loss added to cross-entropy")
    g.add_argument("--encoder-init", default=None,
                   help="ViT state dict (.pt/.pth; timm or transformers names, e.g. DINO ViT-S/8) loaded "
                        "into the encoder")
    g.add_argument("--reinit", choices=sorted(REINIT_CHOICES), default="seed",
                   help="after --encoder-init: re-initialise attention and the MLPs of blocks 4+ (seed), "
                        "attention only, or nothing")
    g.add_argument("--reduce-zero-label", action="store_true",
                   help="image folders: ADE20K's labels (0 = 'other' is ignored, 1..150 become 0..149)")


def _load_encoder_init(model, path: str, reinit: str) -> None:
    from bitlower.models.seg_pretrained import ReinitConfig, load_encoder

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise UsageError(f"--encoder-init {path}: cannot read: {err}") from err
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        names = load_encoder(model, state, ReinitConfig(*REINIT_CHOICES[reinit]))
    except ValueError as err:
        raise UsageError(f"--encoder-init {path}: {err}") from err
    log.info("encoder loaded from %s; re-initialised %d modules", path, len(names))


def _datasets(args):
    from bitlower.models.seg_data import load_segmentation

    try:
        return [load_segmentation(args.data, split, args.image_size, seed=0, reduce_zero_label=args.reduce_zero_label)
                for split in ("train", "test")]
    except (FileNotFoundError, ImportError) as err:  # ImportError: NIfTI data without nibabel
        raise UsageError(str(err)) from err


def run_segmentation(args, folder: Path, resume: str | None) -> int:
    """Train a segmentation model from ``bitlower train`` arguments into ``folder``; prints the result."""
    from .cli_train import _binarize_config, _load_init, _train_config
    from .model_args import build_model, check_model_name, normalized_model_args

    model_name = args.model
    if not model_name.startswith("seg_"):
        raise UsageError(f"--task segmentation needs a seg_* model (e.g. {DEFAULT_SEG_MODEL}), got {model_name!r}")
    check_model_name(model_name)
    binarize = _binarize_config(args)
    for flag, path in (("--init", args.init), ("--encoder-init", args.encoder_init)):
        if path and not Path(path).is_file():
            raise UsageError(f"{flag} checkpoint not found: {path}")
    train, test = _datasets(args)
    torch.manual_seed(args.seed)  # model initialisation; the trainer seeds the rest
    model_args = normalized_model_args(args.model_arg)
    model = build_model(model_name, model_args, ("img_size", "in_chans", "num_classes"),
                        (train.image_size, train.in_chans, train.num_classes))
    if args.encoder_init:
        _load_encoder_init(model, args.encoder_init, args.reinit)
    if args.init:
        _load_init(model, args.init)
    distill = args.distill if args.distill != "auto" else ("hard" if args.init and binarize else "none")
    teacher = binarize_(model, binarize).teacher if binarize is not None else None
    if distill != "none" and teacher is None:
        raise UsageError("--distill needs a binarized model (--preset) started from --init full-precision weights")
    config = _train_config(args)
    loss = SegLossConfig(args.dice_weight, train.ignore_index, DistillConfig(distill, args.distill_alpha))
    extra = {"task": "segmentation", "model": model_name, "model_args": [[k, repr(v)] for k, v in model_args], "data": args.data,
             "image_size": list(train.image_size), "preset": args.preset,
             "binarize": None if binarize is None else binarize.to_dict(), "init": args.init,
             "encoder_init": args.encoder_init, "reinit": args.reinit, "reduce_zero_label": args.reduce_zero_label}
    background = 0 if train.classes and train.classes[0] == "background" else None
    metrics = train_segmentation(model, train, config, num_classes=train.num_classes, loss=loss,
                                 teacher=teacher, eval_set=test, background=background, extra_config=extra,
                                 resume=resume, stop_at=args.stop_after)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
    print(f"segmentation {model_name} ({args.preset}) on {args.data}: {shown}")
    print(f"checkpoint {folder / 'checkpoint.pt'}, metrics {folder / 'metrics.jsonl'}, arguments {folder / 'run_args.json'}")
    return 0
