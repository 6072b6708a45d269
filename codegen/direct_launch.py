"""Relaunching a compiled kernel without Triton's JIT binder: host time of the Gluon (and tl.dot) launches.

``kernel[grid](*args, **kwargs)`` binds the arguments, specializes each one (``native_specialize_impl``), builds
the cache key and looks the compiled kernel up on every call. ``DirectLauncher`` does that once per *launch key*
and afterwards calls the compiled kernel's launcher itself, as ``JITFunction.run`` does after its lookup. The key
holds what Triton 3.6 specializes an argument on, read off ``native_specialize_impl`` (``check_keys``, run by CI's
offline build under Triton 3.6, ``benchmarks/hopper_build.py``, checks the correspondence on sample arguments):

    tensor            dtype, ``data_ptr() % 16 == 0``
    int               ``== 1`` (a constexpr), ``% 16 == 0``, int32 / int64 / uint64 range
    bool, float, None the type alone
    TensorDescriptor  dtype, block shape, shared layout (shape and strides are runtime values of the descriptor)

plus the constexpr and option keyword arguments, the device, and Triton's debug and instrumentation knobs. An
argument of another kind, a pre-run hook, or a first call of a key goes through the JIT. On by default under
Triton 3.6 (the release whose ``JITFunction.run`` ``DirectLauncher.launch`` repeats), off under any other;
``BITLOWER_DIRECT_LAUNCH=0`` / ``1`` overrides. Measured on the H200 (session 17, ``benchmarks/host_time.py``):
15-135 us less host time per ``launch_hopper_forward`` call at (16, 16, 256, 72), in three runs.

The eager tl.dot launches (``codegen.launch``) do not take it: through it the stats pass's host time was 185 us
per call against the JIT's 116 (H200 machine, session 18, ``benchmarks/host_parts.py``).
"""
from __future__ import annotations

import os

import torch

CHECKED_TRITON = "3.6."  # the Triton release this module mirrors


def _enabled_by_default() -> bool:
    import triton

    setting = os.environ.get("BITLOWER_DIRECT_LAUNCH")
    return setting == "1" if setting is not None else triton.__version__.startswith(CHECKED_TRITON)


ENABLED = _enabled_by_default()
MAX_KEYS = 256  # compiled variants kept per kernel


def argument_key(arg):
    """What Triton's specialization of one non-constexpr argument depends on (see the module docstring)."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return bool
    if isinstance(arg, int):
        return int, arg == 1, arg % 16 == 0, -2**31 <= arg < 2**31, arg < 2**63
    if isinstance(arg, float):
        return float
    if arg is None:
        return None
    if hasattr(arg, "block_shape") and hasattr(arg, "layout") and isinstance(getattr(arg, "base", None), torch.Tensor):
        return "desc", arg.base.dtype, tuple(arg.block_shape), arg.layout
    raise TypeError(f"no launch key for an argument of type {type(arg).__name__}")


class DirectLauncher:
    """``launcher(grid, args, kwargs)`` == ``kernel[grid](*args, **kwargs)`` for one ``@gluon.jit`` or ``@triton.jit``
    ``kernel``: ``args`` fill the first parameters in order, ``kwargs`` the rest by name (constexprs) and the options
    (``num_warps``, ...); ``grid`` a tuple (a callable grid goes through the JIT)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.names = [p.name for p in kernel.params]
        self.defaults = {p.name: p.default for p in kernel.params}
        self.compiled: dict = {}

    def key(self, args, kwargs) -> tuple:
        from triton import knobs
        from triton.runtime import driver

        return (driver.active.get_current_device(), tuple(map(argument_key, args)), tuple(sorted(kwargs.items())),
                knobs.runtime.debug, knobs.compilation.instrumentation_mode)

    def __call__(self, grid, args, kwargs) -> None:
        if self.kernel.pre_run_hooks or callable(grid):
            self.kernel[grid](*args, **kwargs)
            return
        try:
            key = self.key(args, kwargs)
        except TypeError:
            self.kernel[grid](*args, **kwargs)
            return
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if hasattr(compiled, "result"):
                compiled = compiled.result()
            if len(self.compiled) < MAX_KEYS:
                self.compiled[key] = compiled
            return
        self.launch(compiled, grid, self.values(args, kwargs))

    def values(self, args, kwargs) -> list:
        """Every parameter's value in signature order, as the JIT binder's ``bound_args``."""
        rest = self.names[len(args):]
        return list(args) + [kwargs[name] if name in kwargs else self.defaults[name] for name in rest]

    @staticmethod
    def launch(compiled, grid, values) -> None:
        """``JITFunction.run``'s launch of a looked-up kernel (Triton 3.6)."""
        from triton import knobs
        from triton.runtime import driver

        device = driver.active.get_current_device()
        stream = driver.active.get_current_stream(device)
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        metadata = compiled.launch_metadata(grid, stream, *values)
        compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata, metadata,
                     knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *values)


_LAUNCHERS: dict = {}


def launch(kernel, grid, args, kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, through a ``DirectLauncher`` per kernel where ``ENABLED``."""
    if not ENABLED:
        kernel[grid](*args, **kwargs)
        return
    launcher = _LAUNCHERS.get(kernel)
    if launcher is None:
        launcher = _LAUNCHERS[kernel] = DirectLauncher(kernel)
    launcher(grid, args, kwargs)


def sample_arguments() -> list:
    """Arguments of every kind the Gluon launchers pass, with values on both sides of each specialization edge."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    ints = [0, 1, 2, 15, 16, 17, 31, 32, -1, -16, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16, 2**32, 2**63 - 1, 2**63]
    flat = torch.zeros(4096, dtype=torch.bfloat16)
    tensors = [flat, flat[1:], flat[8:], flat[16:], flat.float(), flat.float()[4:], flat.to(torch.float8_e4m3fn),
               flat.to(torch.float8_e4m3fn)[16:], torch.zeros(0)]
    descs = []
    for dtype, block, inner in [(torch.bfloat16, [1, 64, 64], 64), (torch.bfloat16, [1, 64, 64], 72),
                                (torch.bfloat16, [1, 64, 32], 64), (torch.float8_e4m3fn, [1, 64, 64], 64),
                                (torch.float8_e4m3fn, [1, 64, 128], 128)]:
        base = torch.zeros(3, 100, inner, dtype=dtype)
        gl_dtype = gl.bfloat16 if dtype == torch.bfloat16 else gl.float8e4nv
        layout = gl.NVMMASharedLayout.get_default_for(block[1:], gl_dtype)
        descs.append(TensorDescriptor(base, list(base.shape), list(base.stride()), block, layout))
        descs.append(TensorDescriptor(base[:, :77], [3, 77, inner], list(base.stride()), block, layout))
    return ints + [True, False, 0.5, 1.0, 2.0**-30, None] + tensors + descs


def check_keys(samples=None) -> list[str]:
    """Arguments whose ``argument_key`` is equal while the running Triton's specialization differs (must be none)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    by_key: dict = {}
    for arg in sample_arguments() if samples is None else samples:
        spec = native_specialize_impl(BaseBackend, arg, False, True, True)
        by_key.setdefault(argument_key(arg), []).append((spec, arg))
    bad = []
    for key, found in by_key.items():
        if len({str(spec) for spec, _ in found}) > 1:
            bad.append(f"key {key}: specializations {sorted({str(spec) for spec, _ in found})}")
    return bad
