"""``SOURCE_HASH``: a digest of the Python of bitlower's compiled path, computed once at import.

It is the last argument of every operator call bitlower emits (``spec.fwd_op_args``, the backward and
the opaque Gluon operators), so the graphs ``torch.compile`` caches differ between versions: a warm
Inductor or AOTAutograd cache never replays wrapper code built against another version's operator
contract (session 10 hit exactly that after changing the output layout). Files: every ``.py`` of
``bitlower``, ``bitlower.codegen`` and ``bitlower.passes``, found without importing them.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

PACKAGES = ("bitlower", "bitlower.codegen", "bitlower.passes")


def source_files() -> tuple[Path, ...]:
    """Every ``.py`` file of ``PACKAGES`` (sub-packages included), sorted."""
    files = set()
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for root in spec.submodule_search_locations or ():
            files.update(p for p in Path(root).rglob("*.py") if "__pycache__" not in p.parts)
    return tuple(sorted(files))


def _digest(files) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


SOURCE_HASH = _digest(source_files())
