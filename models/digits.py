"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits.

1,797 grey images, pixel values 0..16, 10 classes; shipped with scikit-learn, so no download.
Split: stratified, ``random_state=0``, 360 test images (20%, 35 to 37 per class) and 1,437 train
images. Normalisation uses the train split's pixel mean and std (one value for the single
channel), computed when loading: 4.886 and 6.018 (scikit-learn 1.9.1).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

from .image_dataset import ImageDataset

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360  # 20% of 1,797, a multiple of 10 classes.
DIGITS_CLASSES = [str(i) for i in range(10)]


@functools.lru_cache(maxsize=1)
def _digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)  # (1797,)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {
        "train": (images[idx_train], labels[idx_train]),
        "test": (images[idx_test], labels[idx_test]),
    }


def digits_dataset(split: str = "train", image_size=None) -> ImageDataset:
    """The digits split as an ``ImageDataset`` of (1, 8, 8) images (or resized).

    Args:
        split: ``"train"`` (1,437 images) or ``"test"`` (360 images).
        image_size: output size (int or pair), bilinear; None keeps 8x8.

    Raises:
        ValueError: for an unknown split.

    Example:
        >>> x, y = digits_dataset("test", image_size=32)[0]
        >>> x.shape
        torch.Size([1, 32, 32])
    """
    parts = _digits_split()
    if split not in parts:
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    train_images = parts["train"][0]
    mean, std = float(train_images.mean()), float(train_images.std())
    images, labels = parts[split]
    images = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(labels.copy())  # (N,)
    return ImageDataset(images, labels, [mean], [std], DIGITS_CLASSES, image_size)


def load_digits_tensors(split: str = "train", image_size=None):
    """Normalised digits as tensors: float32 images (N, 1, S, S) and int64 labels (N,).

    Args:
        split: ``"train"`` or ``"test"``.
        image_size: output size (int or pair), bilinear; None keeps 8x8.

    Raises:
        ValueError: for an unknown split.

    Example:
        >>> x, y = load_digits_tensors("train")
        >>> tuple(x.shape), tuple(y.shape)
        ((1437, 1, 8, 8), (1437,))
    """
    return digits_dataset(split, image_size).tensors()
