"""``bitlower export``: the trained model of a ``bitlower train`` run as standard model files.

Reads ``checkpoint.pt`` of the run in ``--out``, rebuilds the model from the configuration the
checkpoint carries (model name, ``--model-arg`` values, the data's fields, the binarization),
loads its weights (or the EMA weights) and writes ``model.safetensors`` + ``bitlower.json``
with ``bitlower.save``: the weights only, no optimizer or training state.
"""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

from bitlower.model_files import save
from bitlower.runtime import BinarizeConfig, binarize_, convert_, read_checkpoint

from .arguments import HelpFormatter, UsageError
from .model_args import build_model
from .train_tasks import get_train_task, task_for_model


def rebuild_model(extra: dict):
    """The model of a run, from its checkpoint's ``config["extra"]`` (fresh weights, binarized as trained)."""
    if "data_info" not in extra:
        raise UsageError("this checkpoint predates `bitlower export` (no data_info in its configuration)")
    task = get_train_task(extra.get("task") or task_for_model(extra["model"]))
    model_args = [(k, ast.literal_eval(v)) for k, v in extra["model_args"]]
    info = tuple(tuple(v) if isinstance(v, list) else v for v in extra["data_info"])
    model = build_model(extra["model"], model_args, task.data_fields, info)
    if extra.get("binarize"):
        binarize_(model, replace(BinarizeConfig.from_dict(extra["binarize"]), keep_teacher=False))
    return model


def run_export(args) -> int:
    """``bitlower export``: see ``add_export_parser``."""
    path = Path(args.out) / "checkpoint.pt"
    if not path.is_file():
        raise UsageError(f"no checkpoint in --out: {path}")
    state = read_checkpoint(path)
    model = rebuild_model(state["config"]["extra"])
    if args.ema:
        if state.get("ema") is None:
            raise UsageError("--ema: this run kept no EMA (train with --ema-decay)")
        model.load_state_dict(state["ema"]["shadow"])
    else:
        model.load_state_dict(state["model"])
    if args.convert:
        convert_(model)
    folder = save(model, args.to or Path(args.out) / "export")
    print(f"exported step {state['step']} of {path} to {folder} (model.safetensors, bitlower.json); "
          f"load with bitlower.load({str(folder)!r})")
    return 0


def add_export_parser(sub) -> None:
    """Register the ``export`` subcommand on the subparsers ``sub``."""
    p = sub.add_parser("export", help="write a trained run's model as model.safetensors + bitlower.json",
                       description="The weights-only export of a `bitlower train` run: rebuilds the model from "
                                   "the checkpoint's configuration and writes it with bitlower.save "
                                   "(no optimizer or training state). Load it with bitlower.load(folder).",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/train", help="the run's folder (holding checkpoint.pt)")
    p.add_argument("--to", default=None, help="export folder (default: <out>/export)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights instead of the trained ones")
    p.add_argument("--convert", action="store_true", help="freeze for deployment first (bitlower.convert_)")
    p.set_defaults(func=run_export)
