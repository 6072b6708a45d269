"""A folder of class subfolders of images, read with Pillow (``root/<class>/<image>``).

Classes are the subfolder names in sorted order; images are converted to RGB, resized
bilinearly to ``image_size`` and normalised with the ImageNet per-channel mean and std.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .layers import to_2tuple

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
# ImageNet training-set per-channel mean and std in [0, 1] units (the values in common use).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and ``(path, label)`` samples under ``root``, both in sorted order.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if it has no class subfolders or no images in them.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected root/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class subfolders (expected root/<class>/<image>)")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        samples += [(path, label) for path in files if path.is_file()]
    if not samples:
        raise ValueError(f"{root} has class folders {classes} but no images {IMAGE_EXTENSIONS}")
    return classes, samples


class ImageFolderDataset(Dataset):
    """Images read lazily from a class-subfolder tree; items are ``(image, label)``.

    Attributes:
        num_classes, in_chans (3), image_size (H, W), classes, samples.

    Args:
        root: the folder holding one subfolder per class.
        image_size: output size (int or pair).

    Raises:
        FileNotFoundError: if ``root`` is missing.
        ValueError: if it holds no classes or images; on read, if a file is not an image.

    Example:
        >>> ds = ImageFolderDataset("data/pets/train", image_size=64)  # doctest: +SKIP
        >>> ds[0][0].shape  # doctest: +SKIP
        torch.Size([3, 64, 64])
    """

    def __init__(self, root, image_size=224) -> None:
        self.root = Path(root)
        self.classes, self.samples = scan_image_folder(self.root)
        self.num_classes = len(self.classes)
        self.in_chans = 3
        self.image_size = to_2tuple(image_size)
        self.mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)  # (3, 1, 1)
        logger.info("image folder %s: %d images, %d classes", root, len(self), self.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        return self.read(path), torch.tensor(label)

    def read(self, path: Path) -> torch.Tensor:
        """One file → normalised float32 (3, H, W)."""
        height, width = self.image_size
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)  # (H, W, 3)
        return (pixels.permute(2, 0, 1) - self.mean) / self.std  # (3, H, W)
