"""A user's segmentation data as image and label-map folders (the ADE20K layout).

    root/images/<split>/<name>.{jpg,jpeg,png}      RGB (or grey) images
    root/annotations/<split>/<name>.png            single-channel label maps, one label per pixel
    root/classes.txt                               optional: one class name per line

``<split>`` is ``training`` or ``train`` for the train split and ``validation``, ``val`` or
``test`` for the test split (ADE20K: ``training``/``validation``). Every image needs a label map
of the same stem and size, and the other way round; nothing is skipped. Without
``classes.txt`` the class count is the largest label found in the train split's maps plus one
(the ignore index excluded). ``reduce_zero_label`` applies ADE20K's convention (label 0 is
"other": it becomes the ignore index and the rest shift down by one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .imagefolder import IMAGENET_MEAN, IMAGENET_STD
from .layers import to_2tuple
from .seg_dataset import IGNORE_INDEX, check_labels, resize_masks

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = ".png"
SPLIT_FOLDERS = {"train": ("training", "train"), "test": ("validation", "val", "test")}
MASK_MODES = ("L", "P", "I", "I;16")  # single-channel PIL modes a label map may have


def _split_folder(root: Path, kind: str, split: str) -> Path:
    names = SPLIT_FOLDERS.get(split)
    if names is None:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    for name in names:
        if (root / kind / name).is_dir():
            return root / kind / name
    raise FileNotFoundError(f"no {kind} folder for split {split!r}: expected one of "
                            f"{[str(root / kind / n) for n in names]}")


def pair_files(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label map)`` pairs of a split, sorted by name.

    Raises:
        FileNotFoundError: a missing folder, or an image without label map (or the reverse).
        ValueError: an empty split, or two images of one stem.
    """
    images_dir, masks_dir = _split_folder(root, "images", split), _split_folder(root, "annotations", split)
    images = {}
    for path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem in images:
            raise ValueError(f"two images named {path.stem!r}: {images[path.stem]} and {path}")
        images[path.stem] = path
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() == MASK_SUFFIX}
    for stem in sorted(set(images) - set(masks)):
        raise FileNotFoundError(f"image {images[stem]} has no label map {masks_dir / (stem + MASK_SUFFIX)}")
    for stem in sorted(set(masks) - set(images)):
        raise FileNotFoundError(f"label map {masks[stem]} has no image {images_dir / stem}.*")
    if not images:
        raise ValueError(f"{images_dir} holds no images {IMAGE_SUFFIXES}")
    return [(images[s], masks[s]) for s in sorted(images)]


def read_image(path: Path) -> np.ndarray:
    """RGB pixels (H, W, 3) uint8; ValueError naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def read_mask(path: Path) -> np.ndarray:
    """Labels (H, W) int64 of a single-channel PNG; ValueError naming the file otherwise."""
    try:
        with Image.open(path) as img:
            if img.mode not in MASK_MODES:
                raise ValueError(f"label map {path} has mode {img.mode!r}; expected one channel {MASK_MODES}")
            return np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read label map {path}: {err}") from err


def _reduce_zero(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    out = mask - 1
    out[(mask == 0) | (mask == ignore_index)] = ignore_index
    return out


def scan_num_classes(pairs, ignore_index: int, reduce_zero_label: bool) -> int:
    """Largest label in the label maps (the ignore index excluded) plus one."""
    top = -1
    for _, mask_path in pairs:
        mask = read_mask(mask_path)
        if reduce_zero_label:
            mask = _reduce_zero(mask, ignore_index)
        valid = mask[mask != ignore_index]
        if valid.size:
            top = max(top, int(valid.max()))
    if top < 0:
        raise ValueError("every label map holds only the ignore index: no classes")
    return top + 1


class SegmentationFolder(Dataset):
    """Image/label-map pairs read lazily; items ``(image float32 (3, H, W), mask int64 (H, W))``.

    Images are resized bilinearly and normalised with the ImageNet mean and std; label maps
    are resized by nearest neighbour.

    Args:
        root: the dataset folder (``images/``, ``annotations/``).
        split: ``"train"`` or ``"test"``.
        image_size: output size (int or pair).
        classes: class names; None reads ``root/classes.txt`` or counts labels (see module).
        ignore_index: label that counts nowhere.
        reduce_zero_label: ADE20K's label shift.

    Raises:
        FileNotFoundError, ValueError: see ``pair_files``; on read, a corrupt file, an image and
            label map of different sizes, or labels outside the classes (each naming the file).
    """

    def __init__(self, root, split: str = "train", image_size=256, classes=None, ignore_index: int = IGNORE_INDEX,
                 reduce_zero_label: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation folder not found: {self.root}")
        self.pairs = pair_files(self.root, split)
        self.ignore_index, self.reduce_zero_label = ignore_index, reduce_zero_label
        self.classes = list(classes) if classes is not None else self._classes()
        self.num_classes = len(self.classes)
        self.in_chans = 3
        self.image_size = to_2tuple(image_size)
        self.mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)  # (3, 1, 1)
        log.info("segmentation folder %s (%s): %d pairs, %d classes", root, split, len(self), self.num_classes)

    def _classes(self) -> list[str]:
        listing = self.root / "classes.txt"
        if listing.is_file():
            names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            if not names:
                raise ValueError(f"{listing} lists no classes")
            return names
        train = pair_files(self.root, "train")
        count = scan_num_classes(train, self.ignore_index, self.reduce_zero_label)
        return [str(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        pixels, mask = read_image(image_path), read_mask(mask_path)
        if pixels.shape[:2] != mask.shape:
            raise ValueError(f"image {image_path} is {pixels.shape[:2]} but label map {mask_path} is {mask.shape}")
        if self.reduce_zero_label:
            mask = _reduce_zero(mask, self.ignore_index)
        labels = torch.from_numpy(mask)  # (H, W)
        check_labels(labels, self.num_classes, self.ignore_index, str(mask_path))
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
        x = F.interpolate(x[None], size=self.image_size, mode="bilinear", align_corners=False)[0]  # (3, H', W')
        return (x - self.mean) / self.std, resize_masks(labels[None], self.image_size)[0]  # (3, H', W'), (H', W')
