"""Hopper (compute capability 9.x) forward and backward written in Gluon (Triton 3.6): the sm_90 family.

Run only when asked for, ``KernelOptions(forward="hopper")`` (the default plan does not pick it yet:
inside whole compiled models it is slower than the tl.dot forward, host time per call,
``benchmarks/kernel_notes.md`` session 10), and when the plan's
``hopper_forward_unsupported(call, spec, device)`` returns None; the tl.dot kernels
(``codegen/forward*.py``) stay the portable path (Ampere, other GPUs, the interpreter).
Files: ``support`` (the predicates, TMA repair of v), ``config`` (tiles, operand widths), ``launcher``
(host side), ``opaque`` (how the opaque operators are defined), ``op`` (the opaque
``bitlower::hopper_fwd`` operator and ``hopper_forward``, the adapter ``codegen.forward`` calls),
``kernel_sage`` (structure (a), one warpgroup per 64-row CTA; imported only at launch: Gluon's API is
Triton-version specific) with ``kernel_sage_rows`` (its row scalars and epilogue), ``exp2_mix`` (its optional
MUFU/polynomial exp2, ``HopperConfig.poly_exp``), ``kernel_pingpong`` (structure (b): a TMA producer warp and
consumer warpgroups, ``HopperConfig.consumers``; the tile table's choice at long sequences).
Checked on the H200 by ``tests/codegen/test_gpu_hopper.py``.
The backward (``KernelOptions(backward="hopper")``, and the plan's default at D, Dv <= 128:
``plan.auto_backward``): ``backward_support``, ``backward_launcher``, ``backward_op`` (``bitlower::hopper_bwd``),
``kernel_bwd`` / ``kernel_bwd_q``; checked on the H200 by ``tests/codegen/test_gpu_hopper_bwd.py``.
"""
from __future__ import annotations

from .config import HopperConfig, hopper_config
from .launcher import launch_hopper_forward
from .op import hopper_forward
from .support import gluon_unavailable, hopper_forward_unsupported, hopper_tensors_unsupported

__all__ = ["HopperConfig", "gluon_unavailable", "hopper_config", "hopper_forward", "hopper_forward_unsupported",
           "hopper_tensors_unsupported", "launch_hopper_forward"]
