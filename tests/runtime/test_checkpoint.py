"""Checkpoint files: atomic replacement under a kill, corruption detection, RNG round trip."""
import io
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bitlower.runtime import checkpoint as checkpoint_module
from bitlower.runtime.checkpoint import (CheckpointError, capture_rng, check_rng, read_checkpoint, restore_rng,
                                         save_checkpoint)


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "a" / "ck.pt", {"step": 3, "w": torch.arange(4.0)})
    state = read_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert sorted(os.listdir(tmp_path / "a")) == ["ck.pt", "ck.pt.integrity.json"]  # no temporary file left
    plain = torch.load(path, weights_only=True)  # a plain torch.save file
    assert plain["step"] == 3 and torch.equal(plain["w"], torch.arange(4.0))


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "record", "no_record", "swapped"])
def test_corrupt_file_refused(tmp_path, damage):
    path = save_checkpoint(tmp_path / "ck.pt", {"w": torch.randn(100)})
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-50] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header":
        data[:4] = b"XXXX"
    elif damage == "record":
        (tmp_path / "ck.pt.integrity.json").write_text("{not json")
    elif damage == "no_record":
        (tmp_path / "ck.pt.integrity.json").unlink()
    else:  # another valid torch file under the name
        buffer = io.BytesIO()
        torch.save({"format_version": 2, "w": torch.zeros(100)}, buffer)
        data = buffer.getvalue()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum|integrity"):
        read_checkpoint(path)


KILLED_WRITER = textwrap.dedent("""
    import importlib.util, os, signal, sys, torch
    # The module alone (it needs only torch and numpy): importing the bitlower package would
    # cost most of this test's time.
    spec = importlib.util.spec_from_file_location("checkpoint", sys.argv[3])
    checkpoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkpoint)
    path, kill_at = sys.argv[1], int(sys.argv[2])
    checkpoint.save_checkpoint(path, {"version": 1, "w": torch.ones(1000)})
    real, calls = os.replace, []
    def replace(src, dst):  # the process dies before the kill_at-th rename of the second write
        calls.append(dst)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    checkpoint.os.replace = replace
    checkpoint.save_checkpoint(path, {"version": 2, "w": torch.zeros(1000)})
""")


@pytest.mark.parametrize("kill_at", [1, 2, 3])  # renames: record (old+new), data file, record (new)
def test_kill_at_every_rename_keeps_a_readable_checkpoint(tmp_path, kill_at):
    path = tmp_path / "ck.pt"
    module = checkpoint_module.__file__
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), str(kill_at), module], capture_output=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    state = read_checkpoint(path)
    expected = 1 if kill_at <= 2 else 2  # the data file is renamed by the second call
    assert state["version"] == expected and torch.equal(state["w"], torch.full((1000,), 2.0 - expected))
    leftovers = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert leftovers  # the killed writer's temporary files
    save_checkpoint(path, {"version": 3})  # the next write removes them (their process is gone)
    assert read_checkpoint(path)["version"] == 3
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "ck.pt.integrity.json"]


def test_temporary_of_a_live_process_is_kept(tmp_path):
    live = tmp_path / f".ck.pt.tmp-{os.getppid()}"  # the parent process is alive
    live.write_bytes(b"in progress")
    save_checkpoint(tmp_path / "ck.pt", {"version": 1})
    assert live.exists()


def test_first_format_still_reads(tmp_path):
    import hashlib
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "step": 7}, buffer)
    payload = buffer.getvalue()
    path = tmp_path / "old.pt"
    path.write_bytes(b"BLCKPT01" + hashlib.sha256(payload).digest() + payload)
    assert read_checkpoint(path)["step"] == 7


def test_failed_write_cleans_up(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ck.pt", {"version": 1})

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("bitlower.runtime.checkpoint.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"version": 2})
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "ck.pt.integrity.json"] and read_checkpoint(path)["version"] == 1


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
    wrong_size = dict(state, torch=state["torch"][:-8])  # e.g. another torch build's generator
    before = torch.get_rng_state()
    with pytest.raises(CheckpointError, match="malformed random state"):
        check_rng(wrong_size)
    assert torch.equal(torch.get_rng_state(), before)  # checked on a fresh generator, not the global one
