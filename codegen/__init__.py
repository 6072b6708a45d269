"""Triton kernels of binary attention: the CUDA path of the ``bitlower`` operators.

``bitlower/ops.py`` asks :func:`unsupported_reason` / :func:`unsupported_backward_reason` (both
answered by ``plan``: the one pure kernel-plan function) and runs :func:`forward` / :func:`backward`
when they return None (the reference otherwise). Layers: ``plan`` (which kernels, tiles, or why
not), ``tiles`` (device helpers), ``prologue`` / ``stats`` (sign + pack + scalars),
``forward_tiles`` (the key-tile loop both forward kernels share), ``forward_kernel`` /
``forward_v2_kernel`` / ``backward_kernels`` (the ``@triton.jit`` kernels), ``forward`` /
``forward_v2`` / ``backward`` (launchers that own strides, grid and config choice), ``configs``
(the measured tile table).
"""
from __future__ import annotations

from .backward import backward
from .forward import forward
from .plan import KernelOptions, plan_backward, plan_forward
from . import support
from .support import unsupported_backward_reason, unsupported_reason

__all__ = ["KernelOptions", "backward", "forward", "plan_backward", "plan_forward", "unsupported_backward_reason",
           "unsupported_reason"]
