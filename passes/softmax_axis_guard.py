"""Softmaxes over a non-last axis reach Inductor as a softmax over the last axis of a moved view.

Inductor's attention pattern rewrite (``torch/_inductor/fx_passes/fuse_attention.py``) ignores a
softmax's ``dim``: ``matmul -> scale -> softmax(dim=2) -> matmul`` becomes SDPA, a softmax over the
keys (pytorch/pytorch#196468, open). Measured: ``(q @ kᵀ * 0.25).softmax(2) @ v`` compiled by Inductor
is 0.98 off in float32 (torch 2.13, CPU) and 1.29 in float16 (torch 2.11, H200); eager is exact. The
rewrite pass leaves such a site alone (``softmax_not_over_keys``), so without this guard
``backend="bitlower"`` would hand Inductor a graph it silently miscompiles.

``torch.movedim(softmax(torch.movedim(x, d, -1), -1), -1, d)`` is the same function with the same
rounding (the same reduction over the same values); the moves between the scores and the softmax
keep the pattern from matching, and Inductor folds them into the softmax kernel's indexing.
"""
from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule

from bitlower.counters import counters
from bitlower.passes.emit import Emitter
from bitlower.passes.op_table import role_of, softmax_axis

log = logging.getLogger(__name__)


def guard_softmax_axes(gm: GraphModule) -> GraphModule:
    """Rewrites every softmax over a non-last axis into its moved-view form; counts each.

    Counter: ``counters["softmax_axis_guarded"][f"dim{d}_of_{rank}"]``.
    """
    changed = False
    for node in list(gm.graph.nodes):
        role = role_of(node)
        if role is None or role.name != "softmax":
            continue
        read = softmax_axis(role)
        if read is None or read[0] == read[1] - 1:
            continue
        axis, rank = read
        emit = Emitter(gm.graph, node)
        moved = emit.call(torch.movedim, role.args["input"], axis, -1)
        soft = emit.call(torch.softmax, moved, -1, dtype=role.args.get("dtype"))
        back = emit.call(torch.movedim, soft, -1, axis)
        node.replace_all_uses_with(back)
        gm.graph.erase_node(node)
        counters["softmax_axis_guarded"][f"dim{axis}_of_{rank}"] += 1
        log.debug("softmax over dim %d of %d computed over a moved last axis (Inductor pattern guard)", axis, rank)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
