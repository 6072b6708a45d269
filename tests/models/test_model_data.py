"""Datasets: digits split, CIFAR pickles and image folders written here, bad paths."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bitlower.models import (
    ImageFolderDataset,
    detect_format,
    digits_dataset,
    load_cifar,
    load_dataset,
    load_digits_tensors,
)
from bitlower.models.digits import _digits_split


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_balance_and_normalisation():
    x_tr, y_tr = load_digits_tensors("train")
    x_te, y_te = load_digits_tensors("test")
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    per_class = torch.bincount(torch.cat([y_tr, y_te]), minlength=10)  # 174..183 per class
    share = torch.bincount(y_te, minlength=10) / per_class
    assert ((share - 360 / 1797).abs() < 1.5 / per_class).all()  # stratified
    assert abs(x_tr.mean().item()) < 1e-4 and abs(x_tr.std().item() - 1) < 1e-3
    assert abs(x_te.mean().item()) < 0.1 and abs(x_te.std().item() - 1) < 0.1
    train_rows = {tuple(r) for r in x_tr.flatten(1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in x_te.flatten(1).tolist())
    assert overlap <= 2  # the digits set holds a few duplicate images, no shared indices


def test_digits_split_is_deterministic():
    a_x, a_y = load_digits_tensors("test")
    _digits_split.cache_clear()
    b_x, b_y = load_digits_tensors("test")
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    # Pinned: the split must not move between releases (stratified, random_state=0).
    assert a_y[:12].tolist() == [7, 6, 3, 7, 7, 3, 2, 8, 9, 3, 2, 6]
    assert load_digits_tensors("train")[1][:6].tolist() == [3, 9, 1, 3, 1, 9]


def test_digits_upsampling_and_bad_split():
    ds = digits_dataset("train", image_size=32)
    x, y = ds[5]
    assert x.shape == (1, 32, 32) and y.shape == () and ds.image_size == (32, 32)
    small = digits_dataset("train")[5][0]
    down = torch.nn.functional.avg_pool2d(x[None], 4)[0]  # 4x4 means of the bilinear image
    assert (down - small).abs().mean() < 0.25
    assert ds.num_classes == 10 and ds.in_chans == 1 and len(ds) == 1437
    with pytest.raises(ValueError, match="split"):
        digits_dataset("validation")


# ---------------------------------------------------------------- CIFAR


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[:, 0] = i  # marks the batch in channel 0, pixel (0, 0)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data})
    _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return folder


def write_cifar100(root, n=6):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _dump(folder / name, {b"data": data, b"fine_labels": list(range(90, 90 + n)),
                              b"coarse_labels": [0] * n})
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return folder


def test_cifar10_reads_every_batch_in_order(tmp_path):
    folder = write_cifar10(tmp_path)
    ds = load_cifar(tmp_path, "train")  # the parent folder works too
    assert len(ds) == 20 and ds.num_classes == 10 and ds.classes[3] == "c3"
    assert ds.images[:, 0, 0, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    torch.testing.assert_close(ds.images[4], torch.from_numpy(raw[b"data"][0]).reshape(3, 32, 32))
    assert ds.labels[4].item() == raw[b"labels"][0]
    x, y = ds[4]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]) * 255
    std = torch.tensor([0.2470, 0.2435, 0.2616]) * 255
    want = (ds.images[4].float() - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(x, want)
    test = load_dataset(f"cifar10:{folder}", "test", image_size=16)
    assert len(test) == 4 and test[0][0].shape == (3, 16, 16)
    assert test.images[:, 0, 0, 0].tolist() == [5] * 4


def test_cifar100_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path)
    ds = load_dataset(f"cifar100:{folder}", "test")
    assert ds.num_classes == 100 and ds.labels.tolist() == list(range(90, 96))
    assert ds.classes[95] == "f95"
    x, _ = ds.tensors()
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32


def test_cifar_bad_paths_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar(tmp_path / "nowhere")
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(folder, "train")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar(folder, "train")
    _dump(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="3072"):
        load_cifar(folder, "train")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="'labels'"):
        load_cifar(folder, "test")
    with pytest.raises(ValueError, match="split"):
        load_cifar(folder, "val")


def test_cifar_reads_protocol_2_and_legacy_numpy_module_names(tmp_path):
    """The official files are protocol-2 pickles naming ``numpy.core.multiarray``."""
    folder = write_cifar10(tmp_path)
    data = np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8)
    raw = pickle.dumps({b"data": data, b"labels": [7, 8]}, protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    (folder / "test_batch").write_bytes(legacy)
    ds = load_cifar(folder, "test")
    assert ds.labels.tolist() == [7, 8]
    assert torch.equal(ds.images.reshape(2, 3072), torch.from_numpy(data))


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = write_cifar10(tmp_path)
    _dump(folder / "test_batch", {b"data": Payload(), b"labels": []})
    with pytest.raises(ValueError, match="not allowed"):
        load_cifar(folder, "test")


# ---------------------------------------------------------------- image folders


def write_image_folder(root, sizes=((5, 7), (9, 4))):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")
    Image.new("L", (3, 3), 128).save(root / "dog" / "grey.PNG")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_reads_resizes_and_normalises(tmp_path):
    write_image_folder(tmp_path / "train")
    ds = load_dataset(f"imagefolder:{tmp_path}", "train", image_size=(6, 10))
    assert ds.classes == ["cat", "dog"] and len(ds) == 5  # the .txt file is skipped
    x, y = ds[0]
    assert x.shape == (3, 6, 10) and y.item() == 0
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(x, red[:, None, None].expand(3, 6, 10))
    grey, label = ds[4]
    assert label.item() == 1 and grey.shape == (3, 6, 10)
    assert load_dataset(f"imagefolder:{tmp_path}", "train").image_size == (224, 224)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="val"):
        load_dataset(f"imagefolder:{tmp_path}", "val")
    (tmp_path / "empty" / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    ds = ImageFolderDataset(tmp_path / "empty", image_size=4)
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]


# ---------------------------------------------------------------- entry point


def test_load_dataset_dispatch_and_detection(tmp_path):
    c10 = write_cifar10(tmp_path / "a")
    c100 = write_cifar100(tmp_path / "b")
    write_image_folder(tmp_path / "c" / "train")
    assert detect_format(tmp_path / "a") == "cifar10" and detect_format(c10) == "cifar10"
    assert detect_format(c100) == "cifar100" and detect_format(tmp_path / "b") == "cifar100"
    assert detect_format(tmp_path / "c") == "imagefolder"
    assert len(load_dataset(str(c10), "train")) == 20
    assert load_dataset(str(tmp_path / "c"), "train", image_size=8)[0][0].shape == (3, 8, 8)
    assert len(load_dataset("digits", "test")) == 360
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar10:")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "val")


def test_image_dataset_batch_equals_items():
    from bitlower.models.image_dataset import ImageDataset
    from bitlower.runtime.distributed import collate

    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    ds = ImageDataset(images, torch.tensor([0, 1, 2, 0, 1, 2]), [120.0] * 3, [60.0] * 3, ["a", "b", "c"], image_size=12)
    idx = torch.tensor([4, 0, 5])
    x, y = collate(ds, idx)
    assert torch.equal(x, torch.stack([ds[int(i)][0] for i in idx])) and torch.equal(y, torch.tensor([1, 0, 2]))
