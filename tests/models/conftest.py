"""Fixtures for the reference-model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Run each model test with one intra-op thread, restoring the setting afterwards.

    The models here are tiny, so threading gains nothing; on a 2-core machine shared with
    other jobs two threads made the 40-step pixel training test take 4 to 17 s instead of
    1.3 s (measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
