"""Atomic, checksummed training checkpoints and random-number-generator state.

File layout: ``MAGIC`` (8 bytes), SHA-256 of the payload (32 bytes), payload (``torch.save`` of a
dict of plain types and tensors, read back with ``weights_only=True``). A file is written to a
temporary name in the same folder, flushed, fsynced and moved over the target with
``os.replace`` (atomic on POSIX), so a reader sees the old file or the new one, never a part.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MAGIC = b"BLCKPT01"
DIGEST_BYTES = 32  # SHA-256
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, of another format, or does not match the run resuming it."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Args:
        path: target file; its folder is created if missing.
        state: tensors and plain Python values only.

    Returns:
        the path written.

    Example:
        >>> save_checkpoint("/tmp/ck.pt", {"step": 3})  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(payload).digest())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    log.info("bitlower: checkpoint written: %s (%d bytes)", path, len(payload))
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX: the directory entry lives in the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint written by ``save_checkpoint``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: wrong magic, truncated file, checksum mismatch, unreadable payload or
            another format version.
    """
    data = Path(path).read_bytes()
    head = len(MAGIC) + DIGEST_BYTES
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a bitlower checkpoint (bad header)")
    digest, payload = data[len(MAGIC):head], data[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (file truncated or corrupted)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # the payload passed its checksum, so this is a format problem
        raise CheckpointError(f"{path}: unreadable payload: {err}") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {state.get('format_version')!r}, expected {FORMAT_VERSION}")
    return state


def capture_rng() -> dict:
    """Every global random state a training step reads: torch CPU/CUDA, Python, NumPy."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rng(state: dict) -> None:
    """Raise ``CheckpointError`` unless ``state`` is a ``capture_rng`` result this process can restore."""
    try:
        ok = (state["torch"].dtype == torch.uint8 and len(state["python"][1]) == 625
              and state["numpy"][1].numel() == 624)
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise CheckpointError(f"malformed random state: {err}") from err
    if not ok:
        raise CheckpointError("malformed random state")
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) > torch.cuda.device_count():
        raise CheckpointError(f"random state of {len(state['cuda'])} GPUs, this process sees {torch.cuda.device_count()}")


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng`` (call ``check_rng`` first)."""
    torch.set_rng_state(state["torch"])
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"]):
            torch.cuda.set_rng_state(cuda_state, index)


def check_state_dict(what: str, current: dict, saved: dict) -> None:
    """Same keys, shapes and dtypes, or ``CheckpointError`` naming the first differences."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{what}: expected a state dict, got {type(saved).__name__}")
    missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise CheckpointError(f"{what}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, value in current.items():
        other = saved[key]
        if isinstance(value, torch.Tensor):
            if not isinstance(other, torch.Tensor) or value.shape != other.shape or value.dtype != other.dtype:
                got = (tuple(other.shape), other.dtype) if isinstance(other, torch.Tensor) else type(other).__name__
                raise CheckpointError(f"{what}: {key} is {(tuple(value.shape), value.dtype)} here, {got} in the checkpoint")


def check_optimizer_state(current: torch.optim.Optimizer, saved: dict) -> None:
    """The saved optimizer state fits ``current``: groups, parameter counts and per-parameter shapes."""
    try:
        groups, state = saved["param_groups"], saved["state"]
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"optimizer: malformed state: {err}") from err
    if len(groups) != len(current.param_groups):
        raise CheckpointError(f"optimizer: {len(groups)} parameter groups saved, {len(current.param_groups)} here")
    params = []
    for index, (mine, theirs) in enumerate(zip(current.param_groups, groups)):
        if len(mine["params"]) != len(theirs["params"]):
            raise CheckpointError(f"optimizer group {index}: {len(theirs['params'])} parameters saved, "
                                  f"{len(mine['params'])} here")
        params += list(zip(mine["params"], theirs["params"]))
    for param, saved_id in params:
        for name, value in state.get(saved_id, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(f"optimizer: state {name!r} of shape {tuple(value.shape)} for a parameter "
                                      f"of shape {tuple(param.shape)}")
