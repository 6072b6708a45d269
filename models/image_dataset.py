"""An in-memory labelled image dataset that normalises (and optionally resizes) per item.

Images are kept in their stored dtype (uint8 for CIFAR: 50,000 x 3 x 32 x 32 bytes = 154 MB,
where float32 would need 614 MB) and converted when an item is read.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .layers import to_2tuple


def resize_images(x: torch.Tensor, image_size) -> torch.Tensor:
    """Bilinear resize of float images (B, C, H, W) to ``image_size`` (no corner alignment)."""
    size = to_2tuple(image_size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (B, C, H', W')


class ImageDataset(Dataset):
    """Labelled images held as one tensor; items are ``(image, label)``.

    An item is ``(images[i] - mean) / std`` per channel, resized bilinearly to ``image_size``
    when given, as float32 (C, H', W'), with an int64 scalar label.

    Attributes:
        num_classes: number of classes (``len(classes)``).
        in_chans: channels C.
        image_size: (H', W') of returned images.
        classes: class names, index = label.

    Args:
        images: (N, C, H, W) tensor, any real dtype.
        labels: (N,) integer tensor.
        mean: per-channel (or one) mean, in the units of ``images``.
        std: per-channel (or one) standard deviation, in the units of ``images``.
        classes: class names.
        image_size: output size (int or pair); None keeps the stored size.

    Raises:
        ValueError: if shapes disagree or a label is outside ``[0, len(classes))``.

    Example:
        >>> ds = ImageDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), [0.], [1.],
        ...                   ["a", "b"], image_size=16)
        >>> ds[0][0].shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str],
        image_size=None,
    ) -> None:
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels must lie in [0, {len(classes)}), got {labels.unique()}")
        self.images = images
        self.labels = labels.long()
        self.in_chans = images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)  # (C|1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)  # (C|1, 1, 1)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        stored = tuple(images.shape[-2:])
        self.image_size = stored if image_size is None else to_2tuple(image_size)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convert(self.images[index : index + 1])[0]  # (C, H', W')
        return x, self.labels[index]

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` in one call: float32 (B, C, H', W') images and int64 (B,) labels."""
        return self.convert(self.images[indices]), self.labels[indices]

    def convert(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise and resize a stored batch (B, C, H, W) → float32 (B, C, H', W')."""
        x = (images.float() - self.mean) / self.std
        return resize_images(x, self.image_size)

    def tensors(self, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item at once: float32 images (N, C, H', W') and int64 labels (N,)."""
        parts = [self.convert(self.images[i : i + chunk]) for i in range(0, len(self), chunk)]
        if not parts:
            return torch.empty(0, self.in_chans, *self.image_size), self.labels
        return torch.cat(parts), self.labels
