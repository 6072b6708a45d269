"""An in-memory segmentation dataset: images with per-pixel label maps, resized per batch.

Items are ``(image float32 (C, H, W), mask int64 (H, W))``; images are resized bilinearly and
masks by nearest neighbour. Every segmentation dataset of ``models/`` has the attributes
``num_classes``, ``in_chans``, ``image_size``, ``classes`` and ``ignore_index``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .layers import to_2tuple

IGNORE_INDEX = 255  # label of pixels that count in no loss or metric (ADE20K/mmseg convention)


def resize_masks(masks: torch.Tensor, image_size) -> torch.Tensor:
    """Nearest-neighbour resize of integer label maps (B, H, W) to ``image_size`` (no new labels)."""
    size = to_2tuple(image_size)
    if tuple(masks.shape[-2:]) == size:
        return masks
    out = F.interpolate(masks[:, None].float(), size=size, mode="nearest")  # (B, 1, H', W')
    return out[:, 0].to(masks.dtype)  # (B, H', W')


def check_labels(mask: torch.Tensor, num_classes: int, ignore_index: int, where: str) -> None:
    """ValueError naming ``where`` when ``mask`` holds a label outside ``[0, K)`` and not ``ignore_index``."""
    bad = (mask != ignore_index) & ((mask < 0) | (mask >= num_classes))
    if bool(bad.any()):
        values = sorted(set(mask[bad].unique().tolist()))[:8]
        raise ValueError(f"{where}: labels {values} outside [0, {num_classes}) and not the ignore index {ignore_index}")


class SegmentationTensors(Dataset):
    """Images (N, C, H, W) and label maps (N, H, W) held as tensors.

    An item's image is ``(images[i] * value_scale - mean) / std`` per channel, resized
    bilinearly to ``image_size``; its mask is resized by nearest neighbour.

    Args:
        images: (N, C, H, W), any real dtype (uint8 keeps memory low).
        masks: (N, H, W) integer label maps.
        mean, std: per-channel (or one) normalisation, in units of ``images * value_scale``.
        classes: class names, index = label (background first where there is one).
        image_size: output size (int or pair); None keeps the stored size.
        ignore_index: the label that counts nowhere.
        value_scale: multiplies stored values first (``1/255`` for uint8 pixels).

    Raises:
        ValueError: shapes that disagree, or labels outside ``[0, K)`` other than ``ignore_index``.

    Example:
        >>> ds = SegmentationTensors(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long),
        ...                          [0.], [1.], ["bg", "fg"], image_size=16)
        >>> [tuple(t.shape) for t in ds[0]]
        [(1, 16, 16), (16, 16)]
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 classes: Sequence[str], image_size=None, ignore_index: int = IGNORE_INDEX,
                 value_scale: float = 1.0) -> None:
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"expected images (N, C, H, W) and masks (N, H, W), got {tuple(images.shape)} "
                             f"and {tuple(masks.shape)}")
        check_labels(masks, len(classes), ignore_index, "masks")
        self.images, self.masks = images, masks
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)  # (C|1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)  # (C|1, 1, 1)
        self.value_scale = value_scale
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.in_chans = images.shape[1]
        self.ignore_index = ignore_index
        stored = tuple(images.shape[-2:])
        self.image_size = stored if image_size is None else to_2tuple(image_size)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], y[0]

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` at once: float32 (B, C, H', W') images and int64 (B, H', W') masks."""
        x = (self.images[indices].float() * self.value_scale - self.mean) / self.std  # (B, C, H, W)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)  # (B, C, H', W')
        return x, resize_masks(self.masks[indices], self.image_size).long()
