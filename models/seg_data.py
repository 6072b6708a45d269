"""One entry point to the segmentation datasets.

``load_segmentation(spec, split, image_size)`` understands:

- ``"digits"``: canvases of the bundled digits (``seg_digits.py``; 1,024 train and 128 test
  canvases), ``"digits:<train>,<test>"`` with other canvas counts. ``image_size`` is the canvas
  side (default 256: N = 1024 tokens at patch 8).
- ``"folder:<path>"``: ``images/`` + ``annotations/`` folders (ADE20K layout, ``seg_folder.py``).
- ``"nifti:<path>"``: ``imagesTr``/``labelsTr`` volumes (``seg_nifti.py``, needs nibabel).
- a bare ``<path>``: ``folder`` when it holds ``images/`` and ``annotations/``, ``nifti`` when
  it holds ``imagesTr/``.

Every dataset yields ``(image float32 (C, H, W), mask int64 (H, W))`` and has ``num_classes``,
``in_chans``, ``image_size``, ``classes`` and ``ignore_index``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .seg_digits import DEFAULT_LENGTHS, digit_canvases
from .seg_folder import SegmentationFolder
from .seg_nifti import nifti_slices

DEFAULT_SIZE = 256  # N = (256 / 8)**2 = 1024 tokens at patch 8
SPLITS = ("train", "test")


def _digit_lengths(option: str) -> dict[str, int]:
    if not option:
        return dict(DEFAULT_LENGTHS)
    parts = option.split(",")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"digits canvas counts must read 'digits:<train>,<test>' (positive ints), got {option!r}")
    return {"train": int(parts[0]), "test": int(parts[1])}


def detect_segmentation_format(root: Path) -> str:
    """``"folder"`` or ``"nifti"`` from a folder's contents.

    Raises:
        FileNotFoundError: not a folder, or neither layout.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation data folder not found: {root}")
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "folder"
    if (root / "imagesTr").is_dir():
        return "nifti"
    raise FileNotFoundError(f"{root} holds neither images/ + annotations/ (image folders) nor imagesTr/ (NIfTI)")


def load_segmentation(spec: str, split: str = "train", image_size=None, seed: int = 0,
                      reduce_zero_label: bool = False) -> Dataset:
    """Build a segmentation dataset from a name or path (see the module docstring).

    Args:
        spec: ``"digits"``, ``"digits:<train>,<test>"``, ``"folder:<path>"``, ``"nifti:<path>"``
            or a folder.
        split: ``"train"`` or ``"test"``.
        image_size: output side (int or pair; canvas side for digits); None: 256.
        seed: the digit canvases' seed (other datasets ignore it).
        reduce_zero_label: image folders only: ADE20K's convention (label 0 ignored, the rest shifted down).

    Raises:
        ValueError: an unknown spec or split, malformed files (naming the file).
        FileNotFoundError: a missing path or file.

    Example:
        >>> ds = load_segmentation("digits:4,2", "test", image_size=96)
        >>> len(ds), ds.num_classes, ds.image_size
        (2, 11, (96, 96))
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    size = DEFAULT_SIZE if image_size is None else image_size
    kind, sep, rest = spec.partition(":")
    if kind == "digits":
        if not isinstance(size, int):
            raise ValueError(f"digit canvases are square: image_size must be an int, got {size!r}")
        return digit_canvases(split, size, _digit_lengths(rest)[split], seed)
    if kind == "folder" and sep:
        return SegmentationFolder(rest, split, size, reduce_zero_label=reduce_zero_label)
    if kind == "nifti" and sep:
        return nifti_slices(rest, split, size)
    if Path(spec).exists():
        kind = detect_segmentation_format(Path(spec))
        return load_segmentation(f"{kind}:{spec}", split, image_size, seed, reduce_zero_label)
    raise ValueError(f"unknown segmentation data {spec!r}: expected 'digits', 'digits:<train>,<test>', "
                     "'folder:<path>', 'nifti:<path>' or an existing folder")
