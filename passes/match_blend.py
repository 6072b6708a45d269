"""Blended probabilities: ``(w1 * softmax(S) + w2 * R) [/ rowsum] @ v`` (ConViT's gated attention).

P·V is linear, so with ``P = softmax(S)`` (rows summing to 1)

    (w1 P + w2 R) @ v / rowsum(w1 P + w2 R) = (w1 (P @ v) + w2 (R @ v)) / (w1 + w2 rowsum(R))

and without the renormalisation the same numerator alone. The rewrite replaces ``P @ v`` by the
operator's output (whose binary softmax also sums to 1 per row) and keeps the blend as written.
Exact only when the weights do not vary over keys (nor queries: ``head``-shaped or numbers, which
commute with ``@ v``), R does not read q or k, and P has no other user; each of these is checked
here and named in the skip reason otherwise.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Node

from bitlower.passes.decide import factor_axes
from bitlower.passes.op_table import is_number, is_tensor, normalize_dim, role_of, tensor_rank, value_of
from bitlower.passes.reasons import SkipReason

# how a blend weight that is not one number per (batch, head) is reported
WEIGHT_REASONS = {"query": SkipReason.BLEND_WEIGHT_PER_QUERY, "key": SkipReason.BLEND_WEIGHT_PER_KEY,
                  "score": SkipReason.BLEND_WEIGHT_SHAPE, "grows": SkipReason.BLEND_WEIGHT_SHAPE}
DIVISIONS = (operator.truediv, operator.itruediv, torch.div, torch.true_divide)
SUMS = (torch.sum,)
DEPENDENCY_LIMIT = 10_000  # ancestors of R visited when checking that it does not read q or k


@dataclass(frozen=True)
class Blend:
    """``(weight * P + other_weight * other) [/ rowsum]`` met between the softmax and P·V.

    Attributes:
        weight: ``w1`` multiplying the probabilities (a number or a graph node).
        other_weight: ``w2`` multiplying the other matrix (a number or a graph node).
        other: ``R``, the other matrix (a graph node).
        renormalised: the blend is divided by its own sum over the keys.
        pv_input: the node the P·V product reads (the blend, or a cast or dropout of it).
    """

    weight: Any
    other_weight: Any
    other: Node
    renormalised: bool
    pv_input: Node | None = None


def _weight_reason(weight, scores_shape: tuple) -> SkipReason | None:
    if is_number(weight):
        return None
    if not is_tensor(weight):
        return SkipReason.BLEND_WEIGHT_SHAPE
    shape = tuple(int(d) for d in value_of(weight).shape)
    return WEIGHT_REASONS.get(factor_axes(shape, scores_shape))


def _mul_split(node, scores_shape: tuple) -> tuple[Any, Any]:
    """``(weight, matrix)`` of ``weight * matrix``; ``(1, node)`` when ``node`` is no product."""
    role = role_of(node)
    if role is None or role.name != "mul":
        return 1, node
    a, b = role.args["input"], role.args["other"]
    for w, m in ((a, b), (b, a)):
        if is_tensor(m) and _weight_reason(w, scores_shape) is None:
            return w, m
    return (a, b) if is_tensor(b) and value_of(b).dim() == len(scores_shape) else (b, a)


def _depends_on(x: Node, targets: set) -> bool:
    queue, seen = [x], set()
    while queue and len(seen) < DEPENDENCY_LIMIT:
        node = queue.pop()
        if node in targets:
            return True
        if node not in seen:
            seen.add(node)
            queue.extend(node.all_input_nodes)
    return bool(queue)  # not proven independent within the limit


def _is_row_sum(node, of: Node) -> bool:
    """``of.sum(-1, keepdim=True)`` or ``of.sum(-1).unsqueeze(-1)``."""
    role = role_of(node)
    if role is not None and role.name == "layout" and node.target in ("unsqueeze", torch.unsqueeze):
        rest = role.args["rest"] or (role.args.get("dim"),)
        return rest[0] in (-1, tensor_rank(node) - 1) and _is_sum(role.args["input"], of, keepdim=False)
    return _is_sum(node, of, keepdim=True)


def _is_sum(node, of: Node, keepdim: bool) -> bool:
    if not isinstance(node, Node) or not (node.target == "sum" or node.target in SUMS) or node.args[0] is not of:
        return False
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dim = dim[0] if isinstance(dim, (list, tuple)) and len(dim) == 1 else dim
    kd = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    return isinstance(dim, int) and normalize_dim(dim, tensor_rank(of)) == tensor_rank(of) - 1 and kd is keepdim


def _renormalisation(blend: Node) -> tuple[Node, list[Node]] | None:
    """``(division, [sum nodes])`` when ``blend``'s two users divide it by its own row sum."""
    users = list(blend.users)
    divs = [u for u in users if u.op == "call_function" and u.target in DIVISIONS and u.args[0] is blend]
    if len(users) != 2 or len(divs) != 1 or len(divs[0].args) != 2:
        return None
    div, total = divs[0], divs[0].args[1]
    if not _is_row_sum(total, blend):
        return None
    chain = [total] if total.args[0] is blend else [total.args[0], total]
    if chain[0] not in users or any(len(n.users) != 1 for n in chain):
        return None
    return div, chain


def match_blend(probs: Node, site) -> tuple[Blend | None, list[Node], Node]:
    """The blend below ``probs`` (the softmax): ``(blend, nodes from probs on, last node)``; on a
    form it cannot rewrite exactly, ``site.skip`` names why and ``blend`` is None."""
    scores_shape = tuple(int(d) for d in value_of(probs).shape)
    if len(probs.users) != 1:
        site.skip(SkipReason.PROBABILITIES_REUSED)
        return None, [probs], probs
    first = next(iter(probs.users))
    role = role_of(first)
    if role is not None and role.name == "mul":
        other = role.args["other"] if role.args["input"] is probs else role.args["input"]
        weight, term, chain = other, first, [probs, first]
    else:
        weight, term, chain = 1, probs, [probs]
    if (reason := _weight_reason(weight, scores_shape)) is not None:
        site.skip(reason)
        return None, chain, term
    add = next(iter(term.users)) if len(term.users) == 1 else None
    add_role = role_of(add)
    if add_role is None or add_role.name != "add" or add_role.args.get("alpha", 1) != 1:
        site.skip(SkipReason.PROBABILITIES_BLENDED)
        return None, chain, term
    second = add_role.args["other"] if add_role.args["input"] is term else add_role.args["input"]
    other_weight, other = _mul_split(second, scores_shape)
    chain += ([second] if second is not other else []) + [add]
    reason = _weight_reason(other_weight, scores_shape) or _other_reason(other, site, add, probs)
    if reason is not None:
        site.skip(reason)
        return None, chain, add
    renorm = _renormalisation(add) if len(add.users) == 2 else None
    if len(add.users) != 1 and renorm is None:
        site.skip(SkipReason.BLEND_REUSED)
        return None, chain, add
    last = add
    if renorm is not None:
        last, sums = renorm
        chain += sums + [last]
    return Blend(weight, other_weight, other, renorm is not None), chain, last


def _other_reason(other, site, add: Node, probs: Node) -> SkipReason | None:
    if not is_tensor(other) or tuple(value_of(add).shape) != tuple(value_of(probs).shape):
        return SkipReason.BLEND_SHAPE  # the blend must keep the probabilities' shape
    if value_of(add).dtype != value_of(probs).dtype:
        return SkipReason.BLEND_DTYPE
    if _depends_on(other, {site.q, site.k}):
        return SkipReason.BLEND_OTHER_READS_QK
    return None
