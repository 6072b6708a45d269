"""``torch.where`` fills beyond the dtype's range written as the value eager gives them.

Eager ``torch.where(keep, s, -1e9)`` on float16 scores rounds the fill to float16 inside the kernel: masked
scores become -inf. AOTAutograd turns the Python fill into ``aten.scalar_tensor(-1e9, dtype=float16)``, and on
CUDA Inductor's constant folding (``constant_fold_uniform_value``) evaluates that node with an overflow check:
the compile raises "value cannot be converted to type c10::Half without overflow" (seen on the H200, torch
2.11, in ``test_generated_graph_through_the_fused_kernels``). This pass writes such a fill as its rounding to
the tensor's dtype (``-inf`` here), which is what eager computes, so the compiled graph neither raises nor
changes a value. ``masked_fill`` is left as written: eager raises on the same fill.
"""
from __future__ import annotations

import logging
import math

import torch
from torch.fx import GraphModule, Node

from bitlower.counters import counters

log = logging.getLogger(__name__)


def _dtype(x):
    """The floating dtype of a traced tensor node, else None."""
    if not isinstance(x, Node):
        return None
    value = x.meta.get("example_value", x.meta.get("val"))
    return value.dtype if isinstance(value, torch.Tensor) and value.is_floating_point() else None


def rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` as ``dtype`` holds it (round to nearest; beyond the largest finite value: +-inf)."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def _where_operands(node: Node) -> tuple[int, int] | None:
    """(index of the tensor operand, index of the fill) among ``node.args`` for ``torch.where(c, x, y)`` and
    ``x.where(c, y)`` with exactly one Python float operand; None for any other node."""
    if node.op == "call_function" and node.target is torch.where and len(node.args) == 3:
        first, second = 1, 2
    elif node.op == "call_method" and node.target == "where" and len(node.args) == 3:
        first, second = 0, 2
    else:
        return None
    a, b = node.args[first], node.args[second]
    if isinstance(a, Node) and isinstance(b, float):
        return first, second
    if isinstance(b, Node) and isinstance(a, float):
        return second, first
    return None


def saturate_where_fills(gm: GraphModule) -> GraphModule:
    """Rewrites each out-of-range float fill of a ``where`` to its rounding in the other operand's dtype.

    Counter: ``counters["where_fill_saturated"][str(dtype)]``.
    """
    changed = False
    for node in gm.graph.nodes:
        found = _where_operands(node)
        if found is None:
            continue
        tensor_at, fill_at = found
        dtype, fill = _dtype(node.args[tensor_at]), node.args[fill_at]
        if dtype is None or dtype == torch.float64 or not math.isfinite(fill):
            continue
        if abs(fill) <= torch.finfo(dtype).max:
            continue
        args = list(node.args)
        args[fill_at] = rounded(fill, dtype)
        node.args = tuple(args)
        counters["where_fill_saturated"][str(dtype)] += 1
        log.debug("where fill %g written as %g, its %s value", fill, args[fill_at], dtype)
        changed = True
    if changed:
        gm.recompile()
    return gm
