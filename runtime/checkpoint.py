"""Atomic, checksummed training checkpoints and random-number-generator state.

Files: ``checkpoint.pt`` is a plain ``torch.save`` of a dict of plain types and tensors, so
``torch.load(path, weights_only=True)`` opens it; beside it, ``checkpoint.pt.integrity.json``
holds the SHA-256 and size of the file (``{"format_version", "accepted": [{"sha256", "bytes"}]}``).
``read_checkpoint`` accepts the file only when it matches an accepted entry, so a truncated,
corrupted or foreign file is refused with a clear error.

Writing keeps a reader's view whole at every instant: the new file goes to a temporary name in
the same folder and is fsynced; the integrity record is replaced (temp + fsync + ``os.replace``,
atomic on POSIX) by one accepting both the old and the new digest; the data file is moved over
the target with ``os.replace``; then the record is replaced by one accepting only the new
digest. A process killed at any point leaves the old checkpoint or the new one, each readable.
Temporary files of killed writers (``.checkpoint.pt.tmp-PID`` whose process is gone) are
removed by the next write. Files of the first format (``MAGIC`` header + digest + payload) are
still read.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

MAGIC = b"BLCKPT01"  # the first format's header
DIGEST_BYTES = 32  # SHA-256
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
INTEGRITY_SUFFIX = ".integrity.json"
TMP_MARK = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, of another format, or does not match the run resuming it."""


def integrity_path(path: str | os.PathLike) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.pt.integrity.json``."""
    path = Path(path)
    return path.with_name(path.name + INTEGRITY_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete ``.<name>.tmp-PID`` files (of the checkpoint and its record) whose process is gone."""
    removed = []
    for name in (path.name, integrity_path(path).name):
        for tmp in path.parent.glob(f".{name}{TMP_MARK}*"):
            pid = tmp.name.rpartition(TMP_MARK)[2]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    if removed:
        log.info("bitlower: removed %d stale temporary files of killed writes in %s", len(removed), path.parent)
    return removed


def _write_atomic(path: Path, data: bytes, replace: bool = True) -> Path:
    """Write ``data`` to ``.<name>.tmp-PID``, fsync, and (``replace``) move it over ``path``."""
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _record(entries: list[dict]) -> bytes:
    return (json.dumps({"format_version": FORMAT_VERSION, "accepted": entries}, indent=1) + "\n").encode()


def _current_entries(path: Path) -> list[dict]:
    try:
        return json.loads(integrity_path(path).read_text())["accepted"][:1] if path.exists() else []
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return []


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically, with its integrity record (module docstring).

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
    remove_stale_temporaries(path)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    entry = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    tmp = _write_atomic(path, payload, replace=False)
    try:
        _write_atomic(integrity_path(path), _record([entry] + _current_entries(path)))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_atomic(integrity_path(path), _record([entry]))
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


def _verified_payload(path: Path, data: bytes) -> tuple[bytes, int]:
    """``(payload, format version)`` after the integrity check of either format."""
    if data[: len(MAGIC)] == MAGIC:
        digest, payload = data[len(MAGIC):len(MAGIC) + DIGEST_BYTES], data[len(MAGIC) + DIGEST_BYTES:]
        if hashlib.sha256(payload).digest() != digest:
            raise CheckpointError(f"{path}: checksum mismatch (file truncated or corrupted)")
        return payload, LEGACY_FORMAT_VERSION
    record = integrity_path(path)
    try:
        accepted = json.loads(record.read_text())["accepted"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no integrity record {record.name} beside it (not written by "
                              "bitlower.runtime.save_checkpoint; torch.load opens it if you trust it)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{record}: malformed integrity record: {err}") from err
    digest = hashlib.sha256(data).hexdigest()
    if not any(isinstance(e, dict) and e.get("sha256") == digest and e.get("bytes") == len(data) for e in accepted):
        raise CheckpointError(f"{path}: checksum mismatch with {record.name} (file truncated, corrupted or replaced)")
    return data, FORMAT_VERSION


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint written by ``save_checkpoint``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: no or a non-matching integrity record (truncated, corrupted, foreign
            file), an unreadable payload or another format version.
    """
    path = Path(path)
    payload, version = _verified_payload(path, path.read_bytes())
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # the payload passed its checksum, so this is a format problem
        raise CheckpointError(f"{path}: unreadable payload: {err}") from err
    if not isinstance(state, dict) or state.get("format_version") != version:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: format version {found!r}, expected {version}")
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
    """Raise ``CheckpointError`` unless ``state`` is a ``capture_rng`` result this process can restore.

    Each part is set on a fresh generator (torch, Python, NumPy), never on the global ones, so
    a state of the wrong size (e.g. from another torch version) is refused before anything
    changes; CUDA states are compared with this process's state sizes.
    """
    try:
        torch.Generator().set_state(state["torch"])
        version, values, gauss = state["python"]
        random.Random().setstate((version, tuple(values), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.RandomState().set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"malformed random state: {first}") from err
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) > torch.cuda.device_count():
            raise CheckpointError(f"random state of {len(cuda)} GPUs, this process sees {torch.cuda.device_count()}")
        for index, saved in enumerate(cuda):
            expected = torch.cuda.get_rng_state(index)
            if not isinstance(saved, torch.Tensor) or saved.dtype != expected.dtype or saved.shape != expected.shape:
                raise CheckpointError(f"random state of GPU {index} does not fit this torch build")


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
