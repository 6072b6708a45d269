"""One entry point to every dataset the reference models train on.

``load_dataset(spec, split, image_size)`` understands:

- ``"digits"``: scikit-learn's bundled 8x8 digits (the embedded default, no files needed).
- ``"cifar10:<path>"``, ``"cifar100:<path>"``: the python-pickle release (see ``cifar.py``).
- ``"imagefolder:<path>"``: ``<path>/<split>/<class>/<image>`` (see ``imagefolder.py``).
- a bare ``<path>``: the format is detected from the folder's contents (CIFAR-10 batches,
  CIFAR-100 ``train``/``meta`` files, else an image folder).

Every dataset yields ``(image float32 (C, H, W), label int64)`` and has the attributes
``num_classes``, ``in_chans``, ``image_size`` and ``classes``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .cifar import load_cifar
from .digits import digits_dataset
from .imagefolder import ImageFolderDataset

SPLITS = ("train", "test")
_DEFAULT_FOLDER_SIZE = 224  # image folders hold mixed sizes, so they need a target size.


def load_dataset(spec: str, split: str = "train", image_size=None) -> Dataset:
    """Build a dataset from a name or path.

    Args:
        spec: ``"digits"``, ``"cifar10:<path>"``, ``"cifar100:<path>"``,
            ``"imagefolder:<path>"`` or a bare path (format detected).
        split: ``"train"`` or ``"test"``; for image folders, the subfolder name to read
            (``"val"`` too).
        image_size: output size (int or pair); None keeps the stored size (224 for folders).

    Raises:
        ValueError: for an unknown name or split, or malformed files.
        FileNotFoundError: if a path or an expected file is missing.

    Example:
        >>> ds = load_dataset("digits", "test", image_size=32)
        >>> len(ds), ds.num_classes, ds.image_size
        (360, 10, (32, 32))
    """
    kind, _, path = spec.partition(":")
    if spec == "digits":
        return digits_dataset(_check_split(split, spec), image_size)
    if kind in ("cifar10", "cifar100") and path:
        return load_cifar(path, _check_split(split, spec), int(kind[5:]), image_size)
    if kind == "imagefolder" and path:
        return _image_folder_split(Path(path), split, image_size)
    if Path(spec).exists():
        return load_dataset(f"{detect_format(Path(spec))}:{spec}", split, image_size)
    raise ValueError(
        f"unknown dataset {spec!r}: expected 'digits', 'cifar10:<path>', 'cifar100:<path>', "
        "'imagefolder:<path>' or an existing folder"
    )


def detect_format(root: Path) -> str:
    """``"cifar10"``, ``"cifar100"`` or ``"imagefolder"`` from a folder's contents.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    for base in (root, root / "cifar-10-batches-py"):
        if (base / "data_batch_1").is_file():
            return "cifar10"
    for base in (root, root / "cifar-100-python"):
        if (base / "train").is_file() and (base / "meta").is_file():
            return "cifar100"
    return "imagefolder"


def _check_split(split: str, spec: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split for {spec!r} must be one of {SPLITS}, got {split!r}")
    return split


def _image_folder_split(root: Path, split: str, image_size) -> ImageFolderDataset:
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder split not found: {folder} (expected {root}/<split>/<class>/<image>)"
        )
    return ImageFolderDataset(folder, _DEFAULT_FOLDER_SIZE if image_size is None else image_size)
