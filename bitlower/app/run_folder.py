"""The folder of one ``bitlower train`` run: refused when another run's files are in it, and
holding ``run_args.json`` (the command's arguments) beside ``checkpoint.pt``, so ``--resume``
needs only ``--out``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import UsageError, key_value, writable_folder

RUN_ARGS_NAME = "run_args.json"
# Arguments that say where or whether a run continues, not what it computes: never taken from the file.
NOT_SAVED = ("func", "command", "resume", "out", "list_models", "stop_after", "verbose")


def prepare_new_run(out: str) -> Path:
    """A writable, empty ``out`` (created if missing), or ``UsageError`` with the reason."""
    folder = writable_folder(out)
    present = sorted(p.name for p in folder.iterdir())
    if present:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise UsageError(f"--out {folder} is not empty ({shown}): pass --resume to continue that run, "
                         "or choose a new folder")
    return folder


def save_run_args(folder: Path, args: argparse.Namespace) -> Path:
    """Write the run's arguments as JSON (``--model-arg`` values as ``KEY=repr(value)`` strings)."""
    values = {k: v for k, v in vars(args).items() if k not in NOT_SAVED}
    values["model_arg"] = [f"{k}={v!r}" for k, v in args.model_arg]
    path = folder / RUN_ARGS_NAME
    path.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    return path


def saved_defaults(out: str, resume: str) -> dict:
    """The saved arguments of the run in ``out`` (or beside the ``resume`` checkpoint), as parser defaults.

    Raises:
        UsageError: no checkpoint, no ``run_args.json`` beside it, or one that is not a JSON object.
    """
    checkpoint = Path(out) / "checkpoint.pt" if resume == "auto" else Path(resume)
    if not checkpoint.is_file():
        raise UsageError(f"no checkpoint to resume from: {checkpoint}")
    path = checkpoint.parent / RUN_ARGS_NAME
    if not path.is_file():
        raise UsageError(f"--resume: {path} not found (the run's arguments are saved there when it starts)")
    try:
        values = json.loads(path.read_text())
    except ValueError as err:
        raise UsageError(f"--resume: {path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise UsageError(f"--resume: {path} does not hold an object of arguments")
    values = {k: v for k, v in values.items() if k not in NOT_SAVED}
    values["model_arg"] = [key_value(text) for text in values.get("model_arg", [])]
    return values
