"""Compatibility names of the former round-2 launcher: the "v2" option set of ``forward.forward``.

``codegen/hopper/launcher.py`` imports ``dense_table`` from here, and benchmarks and GPU tests call
``forward_v2``; new code imports ``operands.dense_table`` and calls ``forward.forward(..., variant="v2")``.
"""
from __future__ import annotations

from .forward import forward
from .operands import dense_table, uses_dense_table
from .plan import KernelOptions, forward_plan

__all__ = ["dense_table", "forward_v2", "uses_dense_table"]


def forward_v2(q, k, v, a, b, bias, spec, plan=None, *, table_dense: bool | None = None, static_max: bool = True,
               config=None):
    """``forward.forward`` with the "v2" option set (``pv_quant == "none"`` only).

    Raises:
        ValueError: ``pv_quant`` is not "none".
    """
    if spec.pv_quant != "none":
        raise ValueError("forward_v2 covers pv_quant 'none' only")
    if plan is None:
        options = KernelOptions(forward="v2", forward_tiles=config.text if config else "", static_max=static_max)
        plan = forward_plan(q, k, v, bias, spec, options)
    return forward(q, k, v, a, b, bias, spec, plan=plan, table_dense=table_dense)
