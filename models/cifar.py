"""CIFAR-10 / CIFAR-100 from the python-pickle release.

Expected layouts (the folders the official archives unpack to):

- CIFAR-10, ``cifar-10-batches-py/``: ``data_batch_1`` … ``data_batch_5``, ``test_batch``,
  ``batches.meta`` (``label_names``); each batch holds ``data`` (n, 3072) uint8, channel-major
  32x32 RGB, and ``labels``.
- CIFAR-100, ``cifar-100-python/``: ``train``, ``test``, ``meta`` (``fine_label_names``); each
  holds ``data`` and ``fine_labels``.

``root`` may be that folder or its parent. Files are read with a restricted unpickler that only
builds numpy arrays and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .image_dataset import ImageDataset

logger = logging.getLogger(__name__)

# Per-channel mean and std of the training images, in [0, 1] units (the values in common use).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_LAYOUT = {
    10: dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta="batches.meta",
        names_key="label_names",
        labels_key="labels",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    100: dict(
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        meta="meta",
        names_key="fine_label_names",
        labels_key="fine_labels",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    ),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes through it
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core alias on numpy 2
            return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, object]:
    """Read one CIFAR pickle into a dict with ``str`` keys (``bytes`` keys are decoded).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not a pickled dict of arrays and lists.
    """
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a CIFAR python-pickle file: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} should hold a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(record: dict, key: str, path: Path):
    if key not in record:
        raise ValueError(f"{path} has no '{key}' entry (found {sorted(record)})")
    return record[key]


def _read_batch(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    record = read_pickle(path)
    data = np.asarray(_field(record, "data", path))
    labels = np.asarray(_field(record, labels_key, path), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: expected data (n, 3072) and {labels_key} (n,), got {data.shape} "
            f"and {labels.shape}"
        )
    return data.astype(np.uint8), labels


def _resolve_root(root: Path, folder: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR folder not found: {root} (expected '{folder}/' or it)")
    nested = root / folder
    return nested if nested.is_dir() else root


def load_cifar(root, split: str = "train", num_classes: int = 10, image_size=None):
    """CIFAR-10 or CIFAR-100 as an ``ImageDataset`` of uint8 (3, 32, 32) images.

    Args:
        root: the pickle folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
        split: ``"train"`` or ``"test"``.
        num_classes: 10 or 100.
        image_size: output size (int or pair), bilinear; None keeps 32x32.

    Raises:
        FileNotFoundError: if the folder or one of its expected files is missing.
        ValueError: for a bad split or class count, or a malformed file.

    Example:
        >>> ds = load_cifar("data/cifar-10-batches-py", "test")  # doctest: +SKIP
        >>> ds.num_classes, len(ds)  # doctest: +SKIP
        (10, 10000)
    """
    if num_classes not in _LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    layout = _LAYOUT[num_classes]
    folder = _resolve_root(Path(root), layout["folder"])
    meta_path = folder / layout["meta"]
    names = [_name(n) for n in _field(read_pickle(meta_path), layout["names_key"], meta_path)]
    batches = [_read_batch(folder / name, layout["labels_key"]) for name in layout[split]]
    data = np.concatenate([b[0] for b in batches])  # (n, 3072)
    labels = np.concatenate([b[1] for b in batches])  # (n,)
    images = torch.from_numpy(data).reshape(-1, 3, 32, 32)  # (n, 3, 32, 32), channel-major rows
    mean = [255.0 * m for m in layout["mean"]]  # stored images are 0..255
    std = [255.0 * s for s in layout["std"]]
    logger.info("CIFAR-%d %s: %d images from %s", num_classes, split, len(labels), folder)
    return ImageDataset(images, torch.from_numpy(labels), mean, std, names, image_size)


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
