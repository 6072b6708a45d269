"""Fixtures shared by the tests of ``benchmarks/``: the scripts are files, not package modules."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def load_script():
    """``load_script(name)``: ``benchmarks/<name>.py`` executed as a module, as when it runs: its folder on
    ``sys.path`` (it imports its neighbours) and itself in ``sys.modules`` while the file executes (dataclasses
    look their module up there). Both are undone when the test module ends."""
    loaded, added_path = [], str(BENCHMARKS) not in sys.path
    if added_path:
        sys.path.insert(0, str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
    if added_path and str(BENCHMARKS) in sys.path:
        sys.path.remove(str(BENCHMARKS))
