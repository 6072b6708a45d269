"""Segmentation data: digit canvases, image/label-map folders, NIfTI slices, and their errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bitlower.models import SegmentationFolder, digit_canvases, load_segmentation
from bitlower.models.digits import _digits_split
from bitlower.models.seg_digits import INK_THRESHOLD, _compose, canvas_seed


def test_digit_canvases_are_deterministic_and_labelled_by_ink():
    a = digit_canvases("train", size=96, length=3, seed=5)
    b = digit_canvases("train", size=96, length=3, seed=5)
    c = digit_canvases("train", size=96, length=3, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.masks, c.masks)
    x, y = a.get_batch(torch.arange(3))
    assert x.shape == (3, 1, 96, 96) and y.shape == (3, 96, 96) and y.dtype == torch.int64
    assert a.num_classes == 11 and a.classes[0] == "background"
    assert int(y.max()) <= 10 and (y > 0).any() and (y == 0).float().mean() > 0.5


def test_digit_canvas_256_gives_1024_tokens_at_patch_8():
    ds = load_segmentation("digits:2,1", "test")
    assert ds.image_size == (256, 256) and (256 // 8) ** 2 == 1024


def test_test_canvases_come_from_the_test_digits_only():
    parts = _digits_split()
    ds = digit_canvases("test", size=96, length=2, seed=0)
    gen_seed = canvas_seed(0, "test", 0)
    for split, same in (("test", True), ("train", False)):
        digits, labels = (torch.from_numpy(a.copy()) for a in parts[split])
        ink, mask = _compose(digits, labels, 96, torch.Generator().manual_seed(gen_seed))
        assert torch.equal(mask.to(torch.uint8), ds.masks[0]) == same
        assert torch.equal(mask > 0, (ink > INK_THRESHOLD)) or not same


@pytest.mark.parametrize("spec,match", [("digits:3", "digits:<train>,<test>"), ("nope", "unknown segmentation data")])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_segmentation(spec, "train", 96)


def _write_pair(root, split, name, image, mask, image_suffix=".png"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / split / f"{name}{image_suffix}")
    Image.fromarray(mask).save(root / "annotations" / split / f"{name}.png")


def _ade_like(root, n=2, top=3):
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for i in range(n):
            image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            mask = rng.integers(0, top + 1, (12, 10), dtype=np.uint8)
            mask[0, 0] = top  # every map holds the largest label
            _write_pair(root, split, f"img{i}", image, mask, ".jpg" if i else ".png")
    return root


def test_folder_reads_pairs_resizes_and_counts_classes(tmp_path):
    root = _ade_like(tmp_path)
    ds = SegmentationFolder(root, "train", image_size=(8, 6))
    x, y = ds[1]
    assert len(ds) == 2 and x.shape == (3, 8, 6) and y.shape == (8, 6) and ds.num_classes == 4
    mask = np.asarray(Image.open(root / "annotations/training/img1.png")).astype(np.int64)
    assert set(y.unique().tolist()) <= set(np.unique(mask).tolist())  # nearest: no new labels
    assert load_segmentation(str(root), "test", 8).num_classes == 4  # bare path, layout detected
    (root / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    assert SegmentationFolder(root, "test").classes == ["a", "b", "c", "d", "e"]


def test_folder_reduce_zero_label_and_ignore_index(tmp_path):
    root = tmp_path
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    for split in ("training", "validation"):
        _write_pair(root, split, "a", np.zeros((2, 2, 3), np.uint8), mask)
    ds = SegmentationFolder(root, "train", image_size=2, reduce_zero_label=True)
    assert ds.num_classes == 2
    assert ds[0][1].tolist() == [[255, 0], [1, 255]]


@pytest.mark.parametrize("breakage,match", [
    ("missing_mask", "has no label map"),
    ("missing_image", "has no image"),
    ("corrupt_image", "cannot read image .*img0"),
    ("rgb_mask", "img0.png has mode 'RGB'"),
    ("size_mismatch", "img0.* is \\(12, 10\\) but label map"),
    ("label_range", "img0.png: labels \\[9\\]"),
    ("no_split", "no images folder for split 'test'"),
])
def test_folder_bad_inputs_name_the_file(tmp_path, breakage, match):
    root = _ade_like(tmp_path)
    images, masks = root / "images/training", root / "annotations/training"
    if breakage == "missing_mask":
        (masks / "img0.png").unlink()
    elif breakage == "missing_image":
        (images / "img0.png").unlink()
    elif breakage == "corrupt_image":
        (images / "img0.png").write_bytes(b"not a png")
    elif breakage == "rgb_mask":
        Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(masks / "img0.png")
    elif breakage == "size_mismatch":
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "img0.png")
    elif breakage == "label_range":
        (root / "classes.txt").write_text("a\nb\nc\nd\n")
        Image.fromarray(np.full((12, 10), 9, np.uint8)).save(masks / "img0.png")
    elif breakage == "no_split":
        for p in (root / "images/validation").iterdir():
            p.unlink()
        (root / "images/validation").rmdir()
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        split = "test" if breakage == "no_split" else "train"
        ds = SegmentationFolder(root, split, image_size=8)
        ds[0]
