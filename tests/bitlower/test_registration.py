"""``backend="bitlower"`` resolves with and without the installed entry point."""
from __future__ import annotations

import subprocess
import sys

import torch

from bitlower import registration

# A process where importlib.metadata sees no bitlower entry point (a checkout on PYTHONPATH).
WITHOUT_ENTRY_POINT = """
import importlib.metadata as md
real = md.entry_points
def hidden(**kw):
    eps = real(**kw)
    return md.EntryPoints([e for e in eps if e.name != "bitlower"]) if kw.get("group") == "torch_dynamo_backends" else eps
md.entry_points = hidden
import torch
import bitlower
from torch._dynamo.backends.registry import lookup_backend
fn = lookup_backend("bitlower")
print(fn.__module__, fn.__name__)
"""


def test_checkout_without_entry_point_registers_the_name():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_ENTRY_POINT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["bitlower.registration", "bitlower"], proc.stdout


def test_installed_entry_point_is_not_registered_twice():
    assert registration.register_without_entry_point() is False  # the entry point (or the import) named it
    from torch._dynamo.backends.registry import lookup_backend

    assert callable(lookup_backend("bitlower"))
    assert torch.compile(lambda x: x + 1, backend="bitlower", fullgraph=True)(torch.zeros(1)).item() == 1.0
