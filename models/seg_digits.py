"""The embedded segmentation default: canvases composed from the bundled 8x8 digits.

Each canvas is divided into a ``CELLS x CELLS`` grid; 2 to ``CELLS**2 / 2`` randomly chosen
cells each receive one digit of the split, upsampled bilinearly by an integer factor (3 up to
the largest that fits the cell) at a random offset inside the cell, so digits never overlap.
A pixel is labelled ``1 + digit class`` where the upsampled digit's ink is above
``INK_THRESHOLD`` and 0 (background) elsewhere: 11 classes. Gaussian noise (std ``NOISE_STD``)
is added to the whole canvas. Test canvases use only the test split's digits (``digits.py``:
stratified split, 360 test digits), train canvases only the train split's 1,437.

Canvases are generated once, deterministically from ``(seed, split, index)``, and kept as
uint8 (256 x 256: 64 KiB per image and per mask).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from .digits import DIGITS_CLASSES, _digits_split
from .seg_dataset import SegmentationTensors

log = logging.getLogger(__name__)

CELLS = 4  # canvas grid: 4 x 4 cells (64-pixel cells on a 256 canvas)
MIN_SCALE = 3  # smallest upsampling factor: digits of 24 pixels
INK_THRESHOLD = 0.25  # ink (0..1, i.e. digit value / 16) above which a pixel belongs to the digit
NOISE_STD = 0.1  # Gaussian noise on the [0, 1] canvas
DIGIT_MAX = 16.0  # bundled digits hold values 0..16
SPLIT_IDS = {"train": 0, "test": 1}
SEG_DIGIT_CLASSES = ["background"] + [f"digit {c}" for c in DIGITS_CLASSES]
DEFAULT_LENGTHS = {"train": 1024, "test": 128}


def canvas_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of one canvas: 32 bits mixed from ``(seed, split, index)`` by NumPy's
    ``SeedSequence`` (torch's CPU generator keeps only 32 bits of a seed, so no plain arithmetic)."""
    return int(np.random.SeedSequence([seed, SPLIT_IDS[split], index]).generate_state(1)[0])


def _compose(digits: torch.Tensor, labels: torch.Tensor, size: int, gen: torch.Generator):
    """One canvas: ink (size, size) float32 in [0, 1] and labels (size, size) int64."""
    cell = size // CELLS
    ink = torch.zeros(size, size)
    mask = torch.zeros(size, size, dtype=torch.long)
    count = int(torch.randint(2, CELLS * CELLS // 2 + 1, (1,), generator=gen))
    cells = torch.randperm(CELLS * CELLS, generator=gen)[:count].tolist()
    max_scale = max(MIN_SCALE, cell // 8)
    for c in cells:
        i = int(torch.randint(len(labels), (1,), generator=gen))
        side = 8 * int(torch.randint(MIN_SCALE, max_scale + 1, (1,), generator=gen))
        side = min(side, cell)
        glyph = F.interpolate(digits[i][None, None] / DIGIT_MAX, size=(side, side), mode="bilinear",
                              align_corners=False)[0, 0]  # (side, side)
        top = (c // CELLS) * cell + int(torch.randint(cell - side + 1, (1,), generator=gen))
        left = (c % CELLS) * cell + int(torch.randint(cell - side + 1, (1,), generator=gen))
        ink[top:top + side, left:left + side] = glyph
        region = mask[top:top + side, left:left + side]
        region[glyph > INK_THRESHOLD] = 1 + int(labels[i])
    return ink, mask


def digit_canvases(split: str = "train", size: int = 256, length: int | None = None, seed: int = 0,
                   channels: int = 1, image_size=None) -> SegmentationTensors:
    """Canvases of bundled digits with per-pixel labels (background + 10 digit classes).

    Args:
        split: ``"train"`` or ``"test"`` (digits of that split only).
        size: canvas side; at least ``8 * CELLS * MIN_SCALE`` = 96 so that a digit fits a cell
            (256 gives N = 1024 tokens at patch 8).
        length: number of canvases (default 1024 train, 128 test).
        seed: the canvases are a function of ``(seed, split, index)``.
        channels: image channels (the grey canvas repeated; 3 for RGB-pretrained encoders).
        image_size: output size (int or pair); None keeps ``size``.

    Raises:
        ValueError: an unknown split, a canvas too small, a non-positive length or channels.

    Example:
        >>> ds = digit_canvases("test", size=96, length=2)
        >>> [tuple(t.shape) for t in ds[0]], ds.num_classes
        ([(1, 96, 96), (96, 96)], 11)
    """
    parts = _digits_split()
    if split not in parts:
        raise ValueError(f"digit canvas split must be 'train' or 'test', got {split!r}")
    if size < 8 * CELLS * MIN_SCALE:
        raise ValueError(f"canvas size must be >= {8 * CELLS * MIN_SCALE} (a {8 * MIN_SCALE}-pixel digit per cell), "
                         f"got {size}")
    length = DEFAULT_LENGTHS[split] if length is None else length
    if length < 1 or channels < 1:
        raise ValueError(f"length and channels must be positive, got {length} and {channels}")
    digits = torch.from_numpy(parts[split][0].copy())  # (M, 8, 8), values 0..16
    labels = torch.from_numpy(parts[split][1].copy())  # (M,)
    images = torch.empty(length, 1, size, size, dtype=torch.uint8)
    masks = torch.empty(length, size, size, dtype=torch.uint8)
    for index in range(length):
        gen = torch.Generator().manual_seed(canvas_seed(seed, split, index))
        ink, mask = _compose(digits, labels, size, gen)
        noisy = (ink + NOISE_STD * torch.randn(ink.shape, generator=gen)).clamp(0, 1)
        images[index, 0] = (noisy * 255).round().to(torch.uint8)
        masks[index] = mask.to(torch.uint8)
    log.info("digit canvases (%s): %d of %dx%d", split, length, size, size)
    images = images.expand(-1, channels, -1, -1)  # (L, C, S, S), a view: the grey canvas repeated
    # [0, 1] pixels mapped to [-1, 1]: mean 0.5, std 0.5 (a fixed map, the same for both splits).
    return SegmentationTensors(images, masks, [0.5], [0.5], SEG_DIGIT_CLASSES, image_size,
                               value_scale=1 / 255)
