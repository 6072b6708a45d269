"""CPU checks of ``codegen.direct_launch``: which calls go through the JIT, what the direct ones pass.

The correspondence of ``argument_key`` with Triton 3.6's specialization is checked where 3.6 is installed (CI's
offline build step, ``benchmarks/hopper_build.py``); here a fake kernel and driver stand in for the GPU.
"""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from triton.runtime import driver

from bitlower.codegen import direct_launch
from bitlower.codegen.direct_launch import DirectLauncher, argument_key


class FakeCompiled:
    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, "fn", "meta"

    def launch_metadata(self, grid, stream, *values):
        return ("metadata", grid, stream)

    def run(self, *call):
        self.log.append(("direct", call))


class FakeKernel:
    """A kernel ``f(x, n, BLOCK: constexpr, FLAG: constexpr)`` that records how it was launched."""

    def __init__(self):
        def fn(x, n, BLOCK, FLAG):
            """The parameter list the launcher reads (no body: nothing runs it)."""

        parameters = inspect.signature(fn).parameters.values()
        self.params = [SimpleNamespace(name=p.name, default=p.default) for p in parameters]
        self.pre_run_hooks = []
        self.log = []

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return FakeCompiled(self.log)
        return jit


@pytest.fixture
def fake_driver():
    fake = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda device: 1234)
    driver.set_active(fake)
    yield fake
    driver._active = None  # the next use builds the real driver again


def test_a_repeated_launch_key_goes_direct_with_the_binders_values(fake_driver):
    kernel = FakeKernel()
    launcher = DirectLauncher(kernel)
    x = torch.zeros(64)
    launcher((4, 2), (x, 32), dict(BLOCK=64, FLAG=True, num_warps=4))
    launcher((5, 2), (x, 48), dict(BLOCK=64, FLAG=True, num_warps=4))
    assert kernel.log[0][0] == "jit"
    kind, call = kernel.log[1]
    assert kind == "direct"
    # JITFunction.run's launch: grid, stream, function, packed metadata, launch metadata, the hooks, then every
    # parameter in signature order (constexprs included, options not)
    assert call[:4] == (5, 2, 1, 1234) and call[4:7] == ("fn", "meta", ("metadata", (5, 2), 1234))
    assert call[9:] == (x, 48, 64, True)


@pytest.mark.parametrize("change", ["alignment", "int_one", "int_divisible", "constexpr", "option", "dtype"])
def test_a_new_specialization_goes_through_the_jit(fake_driver, change):
    kernel = FakeKernel()
    launcher = DirectLauncher(kernel)
    x = torch.zeros(64)
    base = ((x, 32), dict(BLOCK=64, FLAG=True, num_warps=4))
    args, kwargs = base[0], dict(base[1])
    if change == "alignment":
        args = (x[1:], 32)
    elif change == "int_one":
        args = (x, 1)
    elif change == "int_divisible":
        args = (x, 33)
    elif change == "constexpr":
        kwargs["BLOCK"] = 128
    elif change == "option":
        kwargs["num_warps"] = 8
    else:
        args = (x.double(), 32)
    launcher((1,), *base)
    launcher((1,), args, kwargs)
    assert [entry[0] for entry in kernel.log] == ["jit", "jit"]


def test_hooks_unknown_argument_kinds_and_callable_grids_go_through_the_jit(fake_driver):
    kernel = FakeKernel()
    launcher = DirectLauncher(kernel)
    for _ in range(2):
        launcher((1,), (object(), 32), dict(BLOCK=64, FLAG=True))
    for _ in range(2):
        launcher(lambda meta: (1,), (torch.zeros(8), 32), dict(BLOCK=64, FLAG=True))
    kernel.pre_run_hooks.append(lambda *a, **k: None)
    for _ in range(2):
        launcher((1,), (torch.zeros(8), 32), dict(BLOCK=64, FLAG=True))
    assert [entry[0] for entry in kernel.log] == ["jit"] * 6


def test_argument_keys_of_the_specialization_edges():
    assert argument_key(1) != argument_key(2) != argument_key(16)
    assert argument_key(16) == argument_key(32) and argument_key(2**31) != argument_key(2**31 - 16)
    assert argument_key(True) == argument_key(False) != argument_key(1)
    assert argument_key(0.5) == argument_key(3.0) and argument_key(None) is None
    flat = torch.zeros(64, dtype=torch.bfloat16)
    assert argument_key(flat) == argument_key(flat[8:]) != argument_key(flat[1:])
    with pytest.raises(TypeError):
        argument_key("text")


@pytest.mark.parametrize("version, setting, enabled", [("3.6.0", None, True), ("3.6.1", None, True),
                                                        ("3.9.0", None, False), ("3.6.0", "0", False),
                                                        ("3.9.0", "1", True)])
def test_on_by_default_only_under_the_checked_triton(monkeypatch, version, setting, enabled):
    import triton

    monkeypatch.setattr(triton, "__version__", version)
    if setting is None:
        monkeypatch.delenv("BITLOWER_DIRECT_LAUNCH", raising=False)
    else:
        monkeypatch.setenv("BITLOWER_DIRECT_LAUNCH", setting)
    assert direct_launch._enabled_by_default() is enabled


def test_disabled_it_is_the_jit_call(monkeypatch):
    monkeypatch.setattr(direct_launch, "ENABLED", False)
    kernel = FakeKernel()
    direct_launch.launch(kernel, (3,), (torch.zeros(4), 7), dict(BLOCK=16, FLAG=False))
    assert kernel.log == [("jit", (3,), (kernel.log[0][2][0], 7), dict(BLOCK=16, FLAG=False))]
