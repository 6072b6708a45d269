"""Checkpoint files: atomic replacement under a kill, corruption detection, RNG round trip."""
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bitlower.runtime.checkpoint import (CheckpointError, capture_rng, check_rng, read_checkpoint, restore_rng,
                                         save_checkpoint)


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "a" / "ck.pt", {"step": 3, "w": torch.arange(4.0)})
    state = read_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert os.listdir(tmp_path / "a") == ["ck.pt"]  # no temporary file left


@pytest.mark.parametrize("damage", ["flip", "truncate", "header"])
def test_corrupt_file_refused(tmp_path, damage):
    path = save_checkpoint(tmp_path / "ck.pt", {"w": torch.randn(100)})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-50] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys, torch
    from bitlower.runtime import checkpoint
    path = sys.argv[1]
    checkpoint.save_checkpoint(path, {"version": 1, "w": torch.ones(1000)})
    def killed(src, dst):  # the process dies after the temporary file is complete, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.os.replace = killed
    checkpoint.save_checkpoint(path, {"version": 2, "w": torch.zeros(1000)})
""")


def test_kill_between_write_and_rename_keeps_old_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    leftovers = [p for p in os.listdir(tmp_path) if p != "ck.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.pt.tmp-")  # the complete but unrenamed file
    state = read_checkpoint(path)
    assert state["version"] == 1 and torch.equal(state["w"], torch.ones(1000))
    save_checkpoint(path, {"version": 3})  # the next save replaces the target as usual
    assert read_checkpoint(path)["version"] == 3


def test_failed_write_cleans_up(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ck.pt", {"version": 1})

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("bitlower.runtime.checkpoint.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"version": 2})
    assert os.listdir(tmp_path) == ["ck.pt"] and read_checkpoint(path)["version"] == 1


def test_rng_round_trip():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    state = capture_rng()
    first = (torch.rand(3), random.random(), np.random.rand())
    check_rng(state)
    restore_rng(state)
    assert torch.equal(torch.rand(3), first[0]) and random.random() == first[1] and np.random.rand() == first[2]
    with pytest.raises(CheckpointError):
        check_rng({"torch": torch.zeros(3)})
