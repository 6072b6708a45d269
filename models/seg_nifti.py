"""NIfTI volumes with label volumes, read slice-wise (the layout MRI sets ship in; needs ``nibabel``).

    root/imagesTr/<name>.nii[.gz]   root/labelsTr/<name>.nii[.gz]     train split
    root/imagesVa/... root/labelsVa/...   (or imagesTs/labelsTs)       test split
    root/classes.txt                                                   optional class names

This is the nnU-Net / Medical Segmentation Decathlon / AMOS naming; an image stem may carry
nnU-Net's channel suffix ``_0000``. Each volume is cut into 2-D slices along ``axis``; each
volume's intensities are clipped to its 0.5 and 99.5 percentiles and scaled to [0, 1]. Slices
are resized when loaded (bilinear; labels nearest) and kept as uint8, so the whole split lives
in memory as a ``SegmentationTensors``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .layers import to_2tuple
from .seg_dataset import IGNORE_INDEX, SegmentationTensors, resize_masks

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": ("Tr",), "test": ("Va", "Ts")}
CLIP_PERCENTILES = (0.5, 99.5)  # robust intensity range per volume (MRI has bright outliers)
CHANNEL_SUFFIX = re.compile(r"_0000$")  # nnU-Net names single-channel images <case>_0000.nii.gz


def _nibabel():
    try:
        import nibabel
    except ImportError as err:
        raise ImportError("NIfTI data needs nibabel: pip install nibabel") from err
    return nibabel


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def nifti_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` volume pairs of a split, sorted by case name.

    Raises:
        ValueError: an unknown split, or no volumes.
        FileNotFoundError: missing folders, or a volume without its partner.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    tag = next((t for t in SPLIT_FOLDERS[split] if (root / f"images{t}").is_dir()), None)
    if tag is None or not (root / f"labels{tag}").is_dir():
        raise FileNotFoundError(f"no NIfTI folders for split {split!r} under {root}: expected "
                                f"images{{{','.join(SPLIT_FOLDERS[split])}}} and labels of the same suffix")

    def volumes(folder: Path, strip: bool) -> dict[str, Path]:
        found = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        return {CHANNEL_SUFFIX.sub("", _stem(p)) if strip else _stem(p): p for p in found}

    images, labels = volumes(root / f"images{tag}", True), volumes(root / f"labels{tag}", False)
    for case in sorted(set(images) - set(labels)):
        raise FileNotFoundError(f"image volume {images[case]} has no label volume in {root / f'labels{tag}'}")
    for case in sorted(set(labels) - set(images)):
        raise FileNotFoundError(f"label volume {labels[case]} has no image volume in {root / f'images{tag}'}")
    if not images:
        raise ValueError(f"{root / f'images{tag}'} holds no .nii/.nii.gz volumes")
    return [(images[c], labels[c]) for c in sorted(images)]


def read_volume(path: Path) -> np.ndarray:
    """The volume's voxels as float32 (x, y, z); ValueError naming the file when unreadable."""
    nib = _nibabel()
    try:
        data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types (ImageFileError, EOFError, OSError, zlib.error)
        raise ValueError(f"cannot read NIfTI volume {path}: {err}") from err
    if data.ndim != 3:
        raise ValueError(f"NIfTI volume {path} has shape {data.shape}; expected 3 dimensions")
    return data


def _scaled(volume: np.ndarray) -> np.ndarray:
    low, high = np.percentile(volume, CLIP_PERCENTILES)
    return np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0)


def _slices(volume: np.ndarray, axis: int, size, mode: str) -> torch.Tensor:
    """(x, y, z) -> (S, H', W') slices along ``axis``, resized."""
    t = torch.from_numpy(np.moveaxis(volume, axis, 0).copy())  # (S, H, W)
    if mode == "nearest":
        return resize_masks(t.long(), size)  # (S, H', W')
    return F.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # (S, H', W')


def nifti_slices(root, split: str = "train", image_size=256, axis: int = 2, classes=None, channels: int = 1,
                 ignore_index: int = IGNORE_INDEX) -> SegmentationTensors:
    """Every slice of a split's volumes as a ``SegmentationTensors``.

    Args:
        root: the dataset folder.
        split: ``"train"`` or ``"test"``.
        image_size: slice size after resizing (int or pair).
        axis: slicing axis of the (x, y, z) voxel array (2: axial in RAS-ordered volumes).
        classes: class names; None reads ``root/classes.txt`` or counts the train labels.
        channels: image channels (the grey slice repeated).
        ignore_index: label that counts nowhere.

    Raises:
        ImportError: nibabel is missing.
        FileNotFoundError, ValueError: see ``nifti_pairs``; an unreadable volume, an image and
            label volume of different shapes, or labels that are not integers (naming the file).
    """
    root, size = Path(root), to_2tuple(image_size)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    images, masks = [], []
    for image_path, label_path in nifti_pairs(root, split):
        volume, labels = read_volume(image_path), read_volume(label_path)
        if volume.shape != labels.shape:
            raise ValueError(f"image volume {image_path} is {volume.shape} but labels {label_path} are {labels.shape}")
        if not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
            raise ValueError(f"label volume {label_path} holds values that are no non-negative integers")
        images.append((_slices(_scaled(volume), axis, size, "bilinear") * 255).round().to(torch.uint8))
        masks.append(_slices(labels, axis, size, "nearest"))
    mask_tensor = torch.cat(masks)  # (S_total, H', W')
    if classes is None:
        listing = root / "classes.txt"
        if listing.is_file():
            classes = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            train = mask_tensor if split == "train" else nifti_slices(root, "train", size, axis).masks
            valid = train[train != ignore_index]
            classes = [str(i) for i in range(int(valid.max()) + 1)]
    image_tensor = torch.cat(images)[:, None].expand(-1, channels, -1, -1)  # (S_total, C, H', W')
    log.info("NIfTI %s (%s): %d slices, %d classes", root, split, image_tensor.shape[0], len(classes))
    # [0, 1] intensities mapped to [-1, 1].
    return SegmentationTensors(image_tensor, mask_tensor, [0.5], [0.5], classes, None, ignore_index,
                               value_scale=1 / 255)
