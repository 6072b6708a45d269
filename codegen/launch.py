"""Launch a tl.dot kernel: through ``torch.library.wrap_triton`` while torch traces, directly in eager.

In eager mode ``wrap_triton`` dispatches a higher-order op per launch (about 0.5 ms of host time on
the H200 machine, measured by ``benchmarks/hopper_profile.py``): every tl.dot launch (stats pass,
forward, backward, sign unpack, dense table) goes through here, so an eager call on CUDA tensors pays
no dispatch per launch, and the Hopper forward's opaque custom op none either. CPU tensors (the interpreter, offline recording) keep the ``wrap_triton`` route.
"""
from __future__ import annotations

import torch
import triton.language as tl
from torch.utils._python_dispatch import is_in_torch_dispatch_mode



def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, traceable by torch.compile / make_fx.

    Raises:
        TypeError: (while tracing) an argument is a ``tl.constexpr`` object, not its value: Inductor writes
            a user kernel's arguments into generated source, where ``constexpr[0]`` is a NameError.
    """
    eager = not torch.compiler.is_compiling() and not is_in_torch_dispatch_mode()
    if eager and any(type(a) is torch.Tensor and a.is_cuda for a in args):
        kernel[grid](*args, **kwargs)
        return
    wrapped = [f"argument {i}" for i, a in enumerate(args) if isinstance(a, tl.constexpr)]
    wrapped += [name for name, a in kwargs.items() if isinstance(a, tl.constexpr)]
    if wrapped:
        raise TypeError(f"launch of {kernel.__name__}: {', '.join(wrapped)} is a tl.constexpr object; pass its .value")
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
