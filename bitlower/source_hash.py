"""``SOURCE_HASH``: a digest of the Python of bitlower's compiled path, computed once at import.

It is the last argument (``source``) of every ``bitlower::binary_attention_fwd`` call bitlower emits
(``spec.fwd_op_args``: the functional API and the rewrite pass) and of the opaque Gluon operators
(``bitlower::hopper_fwd`` / ``hopper_bwd``), so the graphs ``torch.compile`` caches differ between
versions. The AOTAutograd cache keys the graph before the operator's body is traced (the first);
Inductor's FX graph cache keys the traced graph, where an opaque operator's output strides come from
its fake, which the key does not see (the second). Session 10 hit the latter after changing the output
layout: a warm cache replayed a wrapper asserting the old strides. Files: every ``.py`` of
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
