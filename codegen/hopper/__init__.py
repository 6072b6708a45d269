"""Hopper (compute capability 9.x) forward written in Gluon (Triton 3.6): the sm_90 kernel family.

Chosen by the kernel plan on sm_90 when ``hopper_forward_unsupported`` returns None; the tl.dot
kernels (``codegen/forward*.py``) stay the portable path (Ampere, other GPUs, the interpreter).
Files: ``support`` (the predicate), ``config`` (tiles, operand widths), ``launcher`` (host side),
``kernel_sage`` (the Gluon kernel, imported only at launch: Gluon's API is Triton-version specific).
Numerically unverified until a GPU session runs ``tests/codegen/test_gpu_hopper.py``.
"""
from __future__ import annotations

from .config import HopperConfig, hopper_config
from .launcher import launch_hopper_forward
from .support import gluon_unavailable, hopper_forward_unsupported

__all__ = ["HopperConfig", "gluon_unavailable", "hopper_config", "hopper_forward_unsupported",
           "launch_hopper_forward"]
