"""Argument types and checks shared by the ``bitlower`` subcommands: each turns a bad value into a
one-line argparse error (exit status 2) that names the flag and the constraint."""
from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

import torch

DEVICES = ("cpu", "cuda")


class UsageError(Exception):
    """A bad command-line argument, reported as one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to every option's help, 0 included (``(default: none)`` for None),
    unless the help states it, the option is a flag (``store_true``), or the default is an empty
    list or suppressed."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is False or default == []
                or default is argparse.SUPPRESS or action.nargs == 0):
            return text
        return f"{text} (default: {'none' if default is None else '%(default)s'})"


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, ">= 1")
non_negative_int = _int_at_least(0, ">= 0")


def optional_float(text: str) -> float | None:
    """A float, or ``none`` for None (``--grad-clip none``, ``--ema-decay none``)."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def device(text: str) -> str:
    """``cpu`` or ``cuda``; ``cuda`` only where torch sees a GPU."""
    if text not in DEVICES:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(DEVICES)})")
    if text == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda is not available here (torch.cuda.is_available() is False); "
                                         "use --device cpu")
    return text


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a Python literal (``2``, ``0.5``, ``True``, ``(4, 4)``) or a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def writable_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder this process can write (created if missing), or ``UsageError``."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{flag} {path}: {parent} is a file, not a folder")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot create the folder: {err.strerror}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the folder is not writable")
    return path


def check_compile_backend(name: str | None) -> None:
    """``UsageError`` unless ``name`` is None or a ``torch.compile`` backend."""
    if name is None:
        return
    from torch._dynamo import list_backends

    known = sorted(set(list_backends(exclude_tags=())) | {"bitlower"})
    if name not in known:
        raise UsageError(f"--compile-backend {name!r} is not a torch.compile backend; known: {', '.join(known)}")
