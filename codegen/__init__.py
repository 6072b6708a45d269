"""Triton kernels of binary attention: the CUDA path of the ``bitlower`` operators.

``bitlower/ops.py`` asks :func:`unsupported_reason` / :func:`unsupported_backward_reason` (both
answered by ``plan``: the one pure kernel-plan function) and runs :func:`forward` / :func:`backward`
when they return None (the reference otherwise). Layers: ``plan`` (which kernels, tiles, or why
not), ``tiles`` (device helpers), ``stats`` (the sign + pack + scalars pass of every forward),
``forward_tiles`` (the forward's key-tile loop), ``forward_kernel`` (the tl.dot forward, option sets
"v1"/"v2") / ``backward_kernels`` (the ``@triton.jit`` kernels), ``forward`` / ``backward``
(launchers that own strides, grid and option choice), ``operands`` (bias and value operands),
``configs`` (the measured tile table), ``launch`` (direct launches in eager, ``wrap_triton`` while tracing),
``hopper`` (the sm_90 Gluon forward and backward, chosen by ``plan`` on compute capability 9.x);
``forward_v2`` keeps the former round-2 names.
"""
from __future__ import annotations

from .backward import backward
from .forward import forward
from .plan import KernelOptions, plan_backward, plan_forward
from . import support
from .support import unsupported_backward_reason, unsupported_reason

__all__ = ["KernelOptions", "backward", "forward", "plan_backward", "plan_forward", "unsupported_backward_reason",
           "unsupported_reason"]
