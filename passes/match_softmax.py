"""Find unfused attention: ``softmax(f(q @ kᵀ)) @ v`` in any of the spellings of ``op_table``.

The matcher starts at each softmax and walks:
  up from its input through score steps (casts, scales, additive biases, masks) to a
  Q·Kᵀ product (matmul / bmm / baddbmm / einsum);
  up from the product's operands through number scales (and transposes of k);
  down from the softmax through casts and dropout to the P·V product.
What each step means comes from ``SCORE_STEPS`` (a table keyed by role); the scale chain is
canonicalised later (``scale_chain``), so the matcher only records the steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import torch
from torch.fx import Node

from bitlower.passes import einsum_forms
from bitlower.passes.match_blend import match_blend
from bitlower.passes.op_table import Role, is_number, is_tensor, role_of, softmax_axis, value_of
from bitlower.passes.reasons import SkipReason
from bitlower.passes.site import AttentionSite, Reshaped, ScoreOp, module_path

# float16's most negative finite value: a fill at or below it makes exp() underflow to
# exactly 0 in every dtype the operator takes (exp(-65504 + |S|max) with |S|max far below
# 65000), so it masks like -inf except on fully masked rows, where eager's softmax of equal
# finite values is uniform (-inf gives NaN there): the rewrite restores those rows
# (``ScoreOp.fill`` carries the value; ``rewrite_attention`` emits the uniform average).
MASK_FILL_LIMIT = -65504.0

Step = tuple[Node, list[ScoreOp]]


def _fill_is_mask(value) -> bool:
    return is_number(value) and (value == -math.inf or value <= MASK_FILL_LIMIT)


def _held_fill(value, scores) -> float:
    """``value`` as the scores' dtype holds it: ``where(keep, s, -1e9)`` on float16 scores fills -inf,
    so eager's fully masked rows are NaN there, not uniform."""
    example = value_of(scores)
    if example is None or not example.is_floating_point():
        return float(value)
    return torch.tensor(float(value), dtype=torch.float64).to(example.dtype).item()


def _mul_steps(role: Role) -> Iterator[Step]:
    a, b = role.args["input"], role.args["other"]
    for x, factor in ((a, b), (b, a)):
        if is_tensor(x):
            yield x, [ScoreOp("scale", factor, power=1)]


def _div_steps(role: Role) -> Iterator[Step]:
    if role.args.get("rounding_mode") is None and is_tensor(role.args["input"]):
        yield role.args["input"], [ScoreOp("scale", role.args["other"], power=-1)]


def _add_steps(role: Role) -> Iterator[Step]:
    a, b, alpha = role.args["input"], role.args["other"], role.args.get("alpha", 1)
    if not (is_tensor(a) and is_tensor(b) and is_number(alpha)):
        return
    yield a, [ScoreOp("bias", b, coef=alpha)]
    yield b, [ScoreOp("scale", alpha)] + [ScoreOp("bias", a)]


def _masked_fill_steps(role: Role) -> Iterator[Step]:
    fill = role.args["value"]
    op = ScoreOp("mask", role.args["mask"], keep=False, fill=_held_fill(fill, role.args["input"])) \
        if _fill_is_mask(fill) else \
        ScoreOp("unsupported", SkipReason.MASKED_FILL_VALUE)
    yield role.args["input"], [op]


def _where_steps(role: Role) -> Iterator[Step]:
    cond, a, b = role.args["condition"], role.args["input"], role.args["other"]
    if is_tensor(a) and _fill_is_mask(b):
        yield a, [ScoreOp("mask", cond, keep=True, fill=_held_fill(b, a))]
    if is_tensor(b) and _fill_is_mask(a):
        yield b, [ScoreOp("mask", cond, keep=False, fill=_held_fill(a, b))]


def _cast_steps(role: Role) -> Iterator[Step]:
    yield role.args["input"], []


SCORE_STEPS: dict[str, Callable[[Role], Iterator[Step]]] = {
    "mul": _mul_steps,
    "div": _div_steps,
    "add": _add_steps,
    "masked_fill": _masked_fill_steps,
    "where": _where_steps,
    "cast": _cast_steps,
}


def scores_product(role: Role) -> tuple[Node, Node, bool, list[ScoreOp]] | None:
    """``(q, k_operand, k_cols, ops)`` when ``role`` is a Q·Kᵀ product, else None.

    ``k_cols`` is True when ``k_operand`` is laid out ``(..., D, M)`` (the usual ``k.transpose``).
    """
    if role.name == "matmul":
        return role.args["input"], role.args["other"], True, []
    if role.name == "baddbmm":
        beta, alpha = role.args["beta"], role.args["alpha"]
        ops = [ScoreOp("scale", alpha)]
        if beta != 0:
            ops.append(ScoreOp("bias", role.args["input"], coef=beta))
        return role.args["batch1"], role.args["batch2"], True, ops
    if role.name == "einsum" and len(role.args["operands"]) == 2:
        k_cols = einsum_forms.scores_form(role.args["equation"])
        if k_cols is not None:
            q, k = role.args["operands"]
            return q, k, k_cols, []
    return None


RESHAPES = ("reshape", "view", "flatten", "unflatten", "unsqueeze", "squeeze")  # row-major views, no expand


def _static_shape(x) -> tuple[int, ...] | None:
    value = value_of(x)
    if not isinstance(value, torch.Tensor) or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(value.shape)


def _is_reshape(role: Role) -> bool:
    target = role.node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return role.name == "layout" and name in RESHAPES and is_tensor(role.args["input"])


def _inside(op: ScoreOp, inner: tuple, outer: tuple) -> ScoreOp:
    """A step met inside a round trip, its tensor operand seen in the scores' shape."""
    if op.kind in ("bias", "mask") and isinstance(op.operand, Node):
        return ScoreOp(op.kind, Reshaped(op.operand, inner, outer), op.power, op.coef, op.keep, op.fill)
    if op.kind == "scale" and not is_number(op.operand):
        return ScoreOp("unsupported", SkipReason.FACTOR_IN_SHAPE_ROUND_TRIP)
    return op


def _walk_scores(x, chain: list[Node], trip: tuple | None = None):
    """``(product_role, ops from the product up, chain)`` above a softmax input, or None.

    ``trip``: ``(inner, outer)`` shapes while inside a reshape round trip (entered at a reshape whose
    output has the shape ``outer``; left at a reshape of the product, whose shape must be ``outer``).
    """
    role = role_of(x)
    if role is None:
        return None
    if trip is None and scores_product(role) is not None:
        return role, [], chain + [x]
    if _is_reshape(role):
        return _walk_reshape(role, chain + [x], trip)
    if trip is not None and _static_shape(x) != trip[0]:
        return None  # a step inside the round trip that changes the view's shape
    steps = SCORE_STEPS.get(role.name)
    for upstream, ops in (steps(role) if steps else ()):
        found = _walk_scores(upstream, chain + [x], trip)
        if found is not None:
            product, below, nodes = found
            return product, below + ([_inside(op, *trip) for op in ops] if trip else ops), nodes
    return None


def _walk_reshape(role: Role, chain: list[Node], trip: tuple | None):
    """Enter a round trip at a reshape that gives the scores' shape, or leave it at the reshape back.

    Leaving needs the reshape's input to have the shape the round trip returns to; above it the
    walk goes on in the scores' own shape (Swin adds its position bias there).
    """
    source = role.args["input"]
    outer, inner = _static_shape(role.node), _static_shape(source)
    if outer is None or inner is None:
        return None
    if trip is None:  # entering: this view gives the scores' shape back
        return _walk_scores(source, chain, (inner, outer))
    if outer != trip[0] or inner != trip[1]:
        return None  # nested round trips, or a view to a third shape
    return _walk_scores(source, chain, None)


LAYOUT_ROLES = ("layout", "transpose", "permute")


def _number_scale(role: Role) -> tuple[Node, ScoreOp] | None:
    """``(source, op)`` when ``role`` multiplies or divides a tensor by a Python number."""
    a, b = role.args.get("input"), role.args.get("other")
    if role.name in ("mul", "div") and is_tensor(a) and is_number(b):
        return a, ScoreOp("scale", b, power=1 if role.name == "mul" else -1)
    if role.name == "mul" and is_number(a) and is_tensor(b):
        return b, ScoreOp("scale", a)
    return None


def scales_to_bypass(operand) -> tuple[list[ScoreOp], list[Node]]:
    """Number scales above a product operand that only the product sees.

    Walks up through single-user layout changes (reshape, view, transpose, ...) and number
    scales; a scalar factor commutes with every layout change, so each scale found can be
    bypassed (its users read its input instead) once its factor joins the canonical scale.

    Returns:
        ``(ops, scale_nodes)``.
    """
    ops, bypass, x = [], [], operand
    while isinstance(x, Node) and len(x.users) == 1:
        role = role_of(x)
        if role is None:
            break
        scale = _number_scale(role)
        if scale is not None:
            x, op = scale
            ops.append(op)
            bypass.append(role.node)
        elif role.name in LAYOUT_ROLES and is_tensor(role.args["input"]):
            x = role.args["input"]
        else:
            break
    return ops, bypass


def _is_dropout_active(role: Role) -> bool:
    p = role.args.get("p", 0.0)
    training = role.args.get("training", role.args.get("train", True))
    return not (is_number(p) and p == 0) and training is not False


def _is_pv_product(user: Node, x: Node) -> bool:
    role = role_of(user)
    if role is None:
        return False
    if role.name == "matmul":
        return role.args["input"] is x
    return role.name == "einsum" and len(role.args["operands"]) == 2 and role.args["operands"][0] is x \
        and einsum_forms.output_form(role.args["equation"]) is not None


def feeds_pv(x: Node) -> bool:
    """Whether ``x`` reaches a P·V product as its P operand through casts and dropout."""
    for user in x.users:
        role = role_of(user)
        if _is_pv_product(user, x):
            return True
        if role is not None and role.name in ("cast", "dropout") and role.args["input"] is x and feeds_pv(user):
            return True
    return False


BLEND_STEPS = 8  # nodes followed down from a softmax when looking for a blended P·V


def feeds_pv_blended(x: Node) -> bool:
    """Whether ``x`` reaches a P·V product as (part of) its P operand through any steps.

    ConViT's gated attention blends two softmaxes, ``(1 - g) * softmax(q kᵀ) + g * softmax(pos)``,
    renormalises, then multiplies by v (``match_blend`` decides whether the rewrite keeps it exact).
    """
    queue, seen = [x], set()
    while queue and len(seen) < BLEND_STEPS:
        node = queue.pop(0)
        if node in seen:
            continue
        seen.add(node)
        for user in node.users:
            if _is_pv_product(user, node):
                return True
            queue.append(user)
    return False


def walk_probabilities(softmax: Node, site: AttentionSite) -> list[Node]:
    """Follow the softmax output to its P·V product; sets ``site.anchor``/``v`` or a reason.

    Returns:
        the nodes from the softmax up to (not including) the product.
    """
    chain, x = [], softmax
    while True:
        chain.append(x)
        if len(x.users) != 1:
            site.skip(SkipReason.PROBABILITIES_REUSED if len(x.users) > 1 else SkipReason.PROBABILITIES_UNUSED)
            return chain
        user = next(iter(x.users))
        role = role_of(user)
        name = role.name if role else None
        if name == "dropout" and role.args["input"] is x:
            if _is_dropout_active(role):
                site.skip(SkipReason.ACTIVE_DROPOUT)
        elif name == "cast" and role.args["input"] is x:
            pass
        elif _is_pv_product(user, x) and name == "matmul":
            site.anchor, site.v, site.v_cols = user, role.args["other"], False
            return chain
        elif _is_pv_product(user, x):
            site.anchor, site.v = user, role.args["operands"][1]
            site.v_cols = einsum_forms.output_form(role.args["equation"])
            return chain
        else:
            site.skip(SkipReason.PROBABILITIES_NOT_MULTIPLIED_BY_V)
            return chain
        x = user


def softmax_axis_reason(role: Role) -> SkipReason | None:
    """None when the softmax runs over the scores' last dim (the keys), else a skip reason.

    ``dim=-1`` and ``dim=rank-1`` are the key axis in every spelling (method, ``torch.softmax``,
    ``F.softmax``, ``torch.special.softmax``, ``nn.Softmax(dim)``); a softmax without ``dim``
    uses an implicit axis (dim 1 for 4-D input, 0 for 3-D), never the keys'.
    """
    dim = role.args.get("dim")
    if dim is None:
        return SkipReason.SOFTMAX_DIM_IMPLICIT
    if not isinstance(dim, int) or isinstance(dim, bool):
        return SkipReason.SOFTMAX_DIM_NOT_CONSTANT
    axis = softmax_axis(role)
    if axis is None or axis[0] != axis[1] - 1:  # None: the scores' rank is unknown
        return SkipReason.SOFTMAX_NOT_OVER_KEYS
    return None


def match_softmax_attention(node: Node) -> AttentionSite | None:
    """The attention site whose softmax is ``node``, or None if ``node`` is not one.

    Example:
        >>> import torch.fx
        >>> from torch.fx.passes.shape_prop import ShapeProp
        >>> def attn(q, k, v):
        ...     return ((q @ k.transpose(-2, -1)) * 0.125).softmax(dim=-1) @ v
        >>> gm = torch.fx.symbolic_trace(attn)
        >>> ShapeProp(gm).propagate(*(torch.randn(1, 2, 4, 8) for _ in range(3)))  # doctest: +ELLIPSIS
        tensor(...)
        >>> [match_softmax_attention(n).spelling for n in gm.graph.nodes if n.target == "softmax"]
        ['matmul>mul>softmax>matmul']
    """
    role = role_of(node)
    if role is None or role.name != "softmax":
        return None
    blended = not feeds_pv(node)
    if blended and not feeds_pv_blended(node):
        return None  # a softmax whose output never multiplies values is not attention
    found = _walk_scores(role.args["input"], [])
    if found is None:
        return None
    product, ops, chain = found
    q, k, k_cols, product_ops = scores_product(product)
    q_ops, q_bypass = scales_to_bypass(q)
    k_ops, k_bypass = scales_to_bypass(k)
    site = AttentionSite("softmax_attention", "", "", anchor=node, q=q, k=k, k_cols=k_cols)
    site.skip(softmax_axis_reason(role))
    site.score_ops = q_ops + k_ops + product_ops + ops
    site.bypass = q_bypass + k_bypass
    site.scores_chain = list(reversed(chain))  # product first
    if blended:
        blend, blend_nodes, last = match_blend(node, site)
        if blend is None:  # a form the blend rewrite cannot keep exact: site.reason names it
            site.v, site.erase, site.spelling = None, [], "softmax>blend>matmul"
            site.module_path = module_path(node)
            return site
        probs = blend_nodes[:-1] + walk_probabilities(last, site)
        site.blend = dataclasses.replace(blend, pv_input=probs[-1])
    else:
        probs = walk_probabilities(node, site)
    site.erase = site.scores_chain + probs + ([site.anchor] if site.anchor is not node else [])
    site.module_path = module_path(site.anchor)
    site.spelling = ">".join(_spelling(n) for n in site.erase)
    return site


def _spelling(node: Node) -> str:
    role = role_of(node)
    return role.name if role else str(node.target)
