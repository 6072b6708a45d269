"""Trainer.load validates every part before applying any (issue 19 item 5): a checkpoint with a wrongly
sized generator state, a non-dict model entry or a negative data position is refused, and the model,
optimizer, RNG and step are left exactly as they were. Each case failed before (half-loaded or accepted)."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from bitlower.models import vit_tiny
from bitlower.runtime import CheckpointError, TrainConfig, binarize_, preset
from bitlower.runtime.checkpoint import read_checkpoint, save_checkpoint
from bitlower.runtime.tasks import ClassificationTask
from bitlower.runtime.trainer import Trainer


def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))


def trainer(out, seed=0):
    torch.manual_seed(seed)
    model = vit_tiny(img_size=8, patch_size=2, in_chans=1, depth=1, num_classes=10, embed_dim=32, num_heads=2)
    binarize_(model, preset("binary_attention", keep_teacher=False))
    config = TrainConfig(steps=6, batch_size=16, out_dir=str(out), progress=False)
    return Trainer(model, ClassificationTask(), data(), config)


def damaged(tmp_path, damage):
    first = trainer(tmp_path / "run")
    first.run(stop_at=3)
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    state.pop("format_version")
    damage(state)
    return save_checkpoint(tmp_path / "bad" / "checkpoint.pt", state)


def snapshot(t):
    return ({k: v.clone() for k, v in t.model.state_dict().items()}, repr(t.optimizer.state_dict()),
            torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), t.step,
            t.batches.state_dict())


def assert_untouched(t, before):
    after = snapshot(t)
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    assert before[1] == after[1] and torch.equal(before[2], after[2]) and before[3] == after[3]
    assert np.array_equal(before[4], after[4]) and before[5:] == after[5:]


def _short_generator(state):
    state["rng"][0]["torch"] = state["rng"][0]["torch"][:-16]  # as from another torch build


def _model_not_a_dict(state):
    state["model"] = list(state["model"].values())


def _negative_position(state):
    state["data"]["position"] = -5


def _rng_not_a_list(state):
    state["rng"] = state["rng"][0]


@pytest.mark.parametrize("damage, message", [
    (_short_generator, "malformed random state"),
    (_model_not_a_dict, "'model' is a list"),
    (_negative_position, "data position"),
    (_rng_not_a_list, "'rng' is a dict"),
])
def test_refused_and_untouched(tmp_path, damage, message):
    path = damaged(tmp_path, damage)
    fresh = trainer(tmp_path / "fresh", seed=1)
    before = snapshot(fresh)
    with pytest.raises(CheckpointError, match=message):
        fresh.load(path)
    assert_untouched(fresh, before)


def test_failure_while_applying_rolls_back(tmp_path, monkeypatch):
    """Defence in depth: an error in the apply phase puts the earlier state back."""
    first = trainer(tmp_path / "run")
    first.run(stop_at=3)
    fresh = trainer(tmp_path / "fresh", seed=1)
    before = snapshot(fresh)

    from bitlower.runtime import checkpoint
    real, calls = checkpoint.restore_rng, []

    def broken(state):  # the first call (the checkpoint's state) fails; the rollback's call works
        calls.append(state)
        if len(calls) == 1:
            raise RuntimeError("simulated failure while restoring the random state")
        real(state)

    monkeypatch.setattr("bitlower.runtime.checkpoint.restore_rng", broken)
    with pytest.raises(CheckpointError, match="the run is unchanged"):
        fresh.load(tmp_path / "run" / "checkpoint.pt")
    monkeypatch.undo()
    assert_untouched(fresh, before)


def test_valid_checkpoint_still_loads(tmp_path):
    first = trainer(tmp_path / "run")
    first.run(stop_at=3)
    fresh = trainer(tmp_path / "fresh", seed=1)
    fresh.load(tmp_path / "run" / "checkpoint.pt")
    assert fresh.step == 3
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), fresh.model.state_dict().values()))
