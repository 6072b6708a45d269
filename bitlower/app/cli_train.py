"""``bitlower train``: any registered model, any registered task (``train_tasks``), binary or full precision.

Defaults come from the library's configs (``TrainConfig``, ``DistillConfig``), so the command line
and the Python API train alike. A new run needs an empty ``--out``; its arguments are saved as
``run_args.json`` there, and ``--resume`` reads them back (flags given again override them; the
trainer then refuses a checkpoint whose configuration differs).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from bitlower.runtime import PRESETS, DistillConfig, TrainConfig, binarize_, preset, read_checkpoint
from bitlower.runtime.checkpoint import CheckpointError, check_state_dict
from bitlower.runtime.distributed import teardown

from .arguments import (HelpFormatter, UsageError, check_compile_backend, device, non_negative_int, optional_float,
                        positive_int, writable_folder)
from .model_args import (DEFAULT_MODEL, add_model_args, build_model, check_model_name, normalized_model_args,
                         print_models)
from .run_folder import prepare_new_run, save_run_args
from .train_tasks import DEFAULT_TASK, TaskRun, get_train_task, registered_tasks, task_for_model, task_names

TRAIN = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
DISTILL = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
CLI_STEPS, CLI_BATCH = 500, 64  # TrainConfig has no defaults for these two


def _binarize_config(args):
    if args.preset == "none":
        return None
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: none, {', '.join(sorted(PRESETS))}")
    return preset(args.preset)


def _load_init(model, path: str) -> None:
    try:
        state = read_checkpoint(path)
        check_state_dict("model", model.state_dict(), state.get("model"))
        model.load_state_dict(state["model"])
    except (CheckpointError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"--init {path} does not fit this full-precision model: {first}") from err


def _resume_path(args) -> str | None:
    if args.resume is None:
        return None
    path = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from: {path}")
    return str(path)


def _train_config(args) -> TrainConfig:
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
                       weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
                       amp=args.amp, seed=args.seed, ema_decay=args.ema_decay, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, log_every=args.log_every, out_dir=args.out,
                       progress=not args.no_progress, device=args.device, compile_backend=args.compile_backend)


def _resolve_task(args):
    """The run's ``TrainTask``; fills ``args.model`` from the task's default where it was not given."""
    task = get_train_task(args.task) if args.task else None
    if args.model is None:
        args.model = (task.default_model if task else None) or DEFAULT_MODEL
    by_model = task_for_model(args.model)
    if task is None:
        return get_train_task(by_model)
    if by_model != task.name and by_model != DEFAULT_TASK:
        raise UsageError(f"--task {task.name} does not fit model {args.model!r} (a {by_model} model)")
    return task


def _run_own_flow(task, args) -> int:
    """A task with its own ``main``: the run folder is prepared here, as for every task."""
    resume = _resume_path(args)
    check_compile_backend(args.compile_backend)
    folder = writable_folder(args.out) if resume else prepare_new_run(args.out)
    if not resume:
        save_run_args(folder, args)
    return task.main(args, folder, resume)


def run_train(args) -> int:
    """``bitlower train``: see ``add_train_parser``."""
    if args.list_models:
        return print_models()
    task = _resolve_task(args)
    if task.main is not None:
        return _run_own_flow(task, args)
    check_model_name(args.model)
    binarize = _binarize_config(args)  # the cheap checks first: names, paths, backend
    resume = _resume_path(args)
    if args.init and not Path(args.init).is_file():
        raise UsageError(f"--init checkpoint not found: {args.init}")
    check_compile_backend(args.compile_backend)
    if args.device is not None:  # a resumed run's saved device is checked here, not by argparse
        try:
            device(args.device)
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"--device: {err}") from None
    config = _train_config(args)
    distill = args.distill if args.distill != "auto" else ("hard" if args.init and binarize else "none")
    distill_config = DistillConfig(distill, args.distill_alpha, args.tau)
    folder = writable_folder(args.out) if resume else prepare_new_run(args.out)
    (train, test), info = task.load_data(args.data, args.image_size)
    torch.manual_seed(args.seed)  # model initialisation; the trainer seeds the rest
    model_args = normalized_model_args(args.model_arg)
    model = build_model(args.model, model_args, task.data_fields, info)
    if args.init:
        _load_init(model, args.init)
    teacher = binarize_(model, binarize).teacher if binarize is not None else None
    if distill != "none" and teacher is None:
        raise UsageError("--distill needs a binarized model (--preset) started from --init full-precision weights")
    if not resume:
        save_run_args(folder, args)
    extra = {"task": task.name, "model": args.model, "model_args": [[k, repr(v)] for k, v in model_args],
             "data": args.data, "image_size": list(info[0]) if isinstance(info[0], tuple) else info[0],
             "preset": args.preset, "binarize": None if binarize is None else binarize.to_dict(), "init": args.init,
             "data_info": [list(v) if isinstance(v, tuple) else v for v in info]}  # rebuilds the model (export)
    run = TaskRun(model, train, test, config, teacher if distill != "none" else None, distill_config, extra,
                  resume, args.stop_after)
    metrics = task.run(run)
    teardown()  # the process group the trainer started under torchrun (none in one process); after an error the
    # process exits with it: a destroy then could wait on peers still inside a collective
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{task.name} {args.model} ({args.preset}) on {args.data}: {shown}")
    print(f"checkpoint {folder / 'checkpoint.pt'}, metrics {folder / 'metrics.jsonl'}, arguments {folder / 'run_args.json'}")
    return 0


def _add_optimisation(p) -> None:
    p.add_argument("--steps", type=positive_int, default=CLI_STEPS, help="optimizer steps of the whole run")
    p.add_argument("--batch-size", type=positive_int, default=CLI_BATCH, help="global batch size")
    p.add_argument("--lr", type=float, default=TRAIN["lr"], help="peak AdamW learning rate (warmup + cosine)")
    p.add_argument("--min-lr-ratio", type=float, default=TRAIN["min_lr_ratio"], help="cosine floor, as a fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=TRAIN["weight_decay"], help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=non_negative_int, default=TRAIN["warmup_steps"], help="linear warmup steps")
    p.add_argument("--grad-clip", type=optional_float, default=TRAIN["grad_clip"],
                   help="max global gradient norm, or 'none'")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default=TRAIN["amp"],
                   help="mixed precision: auto (bf16 on CUDA, off on CPU), bf16 or off")
    p.add_argument("--ema-decay", type=optional_float, default=None,
                   help="keep an EMA of the weights with this decay (e.g. 0.9999); default: none")
    p.add_argument("--seed", type=int, default=TRAIN["seed"], help="random seed")


def _add_schedule(p) -> None:
    p.add_argument("--eval-every", type=non_negative_int, default=TRAIN["eval_every"],
                   help="evaluate every N steps (0: at the end only)")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=TRAIN["checkpoint_every"],
                   help="checkpoint every N steps (0: at the end only)")
    p.add_argument("--log-every", type=non_negative_int, default=TRAIN["log_every"],
                   help="log the training loss every N steps and at the last step (0: never)")
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after this step, writing a checkpoint; continue later with --resume")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue the run in --out (its run_args.json gives every other argument); with a "
                        "value: from CHECKPOINT")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend of the training model, e.g. bitlower")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default="runs/train", help="output folder; must be empty unless --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")


def add_train_parser(sub) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "train", help="train a registered model (classification, diffusion, ...), binary or full precision",
        description="Trains any registered model on a registered task (--task; by default the model decides: "
                    "dit_* diffusion, the rest classification). --preset binarizes the attention first (QAT); "
                    "--init starts from a full-precision checkpoint of this command (--preset none), which "
                    "then is the distillation teacher. Writes checkpoint.pt, metrics.jsonl and run_args.json "
                    "into --out, which must be empty for a new run.",
        formatter_class=HelpFormatter)
    add_model_args(p, f"registered model name; default: {DEFAULT_MODEL}, or the --task's own "
                      "(segmentation: seg_vit_small_patch8)", "input side; default: the data's own size (digits: 32, upsampled from 8)")
    p.add_argument("--task", default=None, help=f"training task, one of {', '.join(task_names())} "
                   "(default: the model's, e.g. diffusion for dit_*)")
    p.add_argument("--data", default="digits",
                   help="'digits' (bundled), 'cifar10:<path>', 'cifar100:<path>', 'imagefolder:<path>' or a folder")
    p.add_argument("--preset", default="binary_attention",
                   help="binarization preset (binary_attention, hamming, hamming_g, hamming_b, sign_ste, "
                        "sign_stopgrad) or 'none' for full precision")
    p.add_argument("--init", default=None, help="full-precision checkpoint to start from (and distill from)")
    p.add_argument("--distill", choices=("auto", "none", "hard", "soft"), default="auto",
                   help="distillation from the --init model; auto: hard with --init and a preset, else none; "
                        "diffusion distills by MSE to the teacher's prediction for any kind but none")
    p.add_argument("--distill-alpha", type=float, default=DISTILL["alpha"], help="weight of the distillation term")
    p.add_argument("--tau", type=float, default=DISTILL["tau"], help="temperature of soft distillation")
    _add_optimisation(p)
    _add_schedule(p)
    added = []  # tasks may share one option group (vqae3d, absorbing)
    for task in registered_tasks():
        if task.add_arguments is not None and task.add_arguments not in added:
            task.add_arguments(p)
            added.append(task.add_arguments)
    p.set_defaults(func=run_train, model=None)  # None: the task's default model (run_train)
    return p
