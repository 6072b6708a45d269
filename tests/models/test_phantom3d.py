"""Procedural head phantoms: deterministic, region-independent, a fixed split, clear errors."""
import pytest
import torch

from bitlower.models.phantom3d import (SEED_SHAPE, PhantomConfig, PhantomPatches, PhantomVolumes, render_box,
                                       render_volume)

CFG = PhantomConfig(shape=(16, 24, 16), train_volumes=3, test_volumes=2)


def test_volumes_are_deterministic_and_distinct():
    a = render_volume(CFG, "train", 1)
    assert a.shape == (1, 16, 24, 16) and a.dtype == torch.float32
    assert torch.equal(a, render_volume(PhantomConfig(shape=(16, 24, 16), train_volumes=3, test_volumes=2),
                                        "train", 1))
    assert not torch.equal(a, render_volume(CFG, "train", 0))
    assert not torch.equal(a, render_volume(CFG, "test", 1))  # the splits are disjoint parameter streams
    other_seed = PhantomConfig(shape=(16, 24, 16), seed=1, train_volumes=3, test_volumes=2)
    assert not torch.equal(a, render_volume(other_seed, "train", 1))
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert 0.05 < a.mean() < 0.6  # a head: bright shell, grey inside, dark background


def test_a_box_renders_as_its_crop_of_the_whole_volume():
    whole = render_volume(CFG, "test", 1)[0]
    box = render_box(CFG, "test", 1, (3, 5, 8), (7, 11, 8))
    assert torch.equal(box, whole[3:10, 5:16, 8:16])


def test_patch_dataset_order_and_batches():
    ds = PhantomPatches(CFG, "train", 8)
    assert len(ds) == 3 * 2 * 3 * 2 and ds.per_volume == 12
    whole = render_volume(CFG, "train", 2)[0]
    (batch,) = ds.get_batch(torch.tensor([24 + 7, 3]))  # volume 2 patch (1, 0, 1); volume 0 patch 3
    assert batch.shape == (2, 1, 8, 8, 8)
    assert torch.equal(batch[0, 0], whole[8:16, 0:8, 8:16])
    assert torch.equal(ds[3][0], batch[1])
    assert len(PhantomVolumes(CFG, "test")) == 2


def test_bad_requests_raise():
    with pytest.raises(ValueError, match="outside the volume"):
        render_box(CFG, "train", 0, (10, 0, 0), (8, 8, 8))
    with pytest.raises(ValueError, match="outside the train split"):
        render_volume(CFG, "train", 3)
    with pytest.raises(ValueError, match="split must be"):
        render_volume(CFG, "val", 0)
    with pytest.raises(ValueError, match="must divide"):
        PhantomPatches(CFG, "train", 5)
    with pytest.raises(ValueError, match="shape"):
        PhantomConfig(shape=(16, 16))
    assert PhantomConfig(shape=SEED_SHAPE).shape == (160, 224, 192)
