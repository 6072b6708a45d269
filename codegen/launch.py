"""Launch a tl.dot kernel: through ``torch.library.wrap_triton`` while torch traces, directly in eager.

In eager mode ``wrap_triton`` dispatches a higher-order op per launch (about 0.5 ms of host time on
the H200 machine, measured by ``benchmarks/hopper_profile.py``): every tl.dot launch (stats pass,
forward, backward, sign unpack, dense table) goes through here, so an eager call on CUDA tensors pays
no dispatch per launch, and the Hopper forward's opaque custom op none either. CPU tensors (the
interpreter, offline recording) keep the ``wrap_triton`` route.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, traceable by torch.compile / make_fx."""
    eager = not torch.compiler.is_compiling() and not is_in_torch_dispatch_mode()
    if eager and any(type(a) is torch.Tensor and a.is_cuda for a in args):
        kernel[grid](*args, **kwargs)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
