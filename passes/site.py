"""What the matchers report: one ``AttentionSite`` per attention found in a graph."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch.fx import Node

from bitlower.passes.reasons import SkipReason

# Status names used in reports and counters.
REWRITTEN = "rewritten"
SKIPPED = "skipped"


@dataclass(frozen=True)
class ScoreOp:
    """One step between the raw product Q·Kᵀ and the softmax, in the order applied.

    Attributes:
        kind: ``"scale"`` (``operand ** power`` multiplies the scores), ``"bias"`` (``coef *
            operand`` is added), ``"mask"`` (a bool ``operand`` keeps scores where it equals
            ``keep`` and sets the rest to ``fill``) or ``"unsupported"`` (``operand`` is the reason).
        operand: a Python number, a graph node, a ``SizePower``, or the ``SkipReason``.
        power: +1 or -1 for ``"scale"``.
        coef: the number multiplying a ``"bias"`` operand.
        keep: for ``"mask"``, the mask value that keeps a score.
        fill: for ``"mask"``, the value masked scores get: -inf, or a finite number at or below
            float16's minimum (``masked_fill(m, torch.finfo(dtype).min)``).
    """

    kind: str
    operand: Any
    power: int = 1
    coef: float = 1.0
    keep: bool = True
    fill: float = -math.inf


@dataclass(frozen=True)
class SizePower:
    """``node.size(dim) ** exponent``: a scale known only at run time (a symbolic size).

    SDPA's default scale ``D ** -0.5`` under ``torch.compile(dynamic=True)``, where ``D``
    is a ``SymInt`` that no graph node holds; the rewrite emits the nodes computing it.

    Attributes:
        node: the tensor node whose size is read.
        dim: the dimension.
        exponent: the power the size is raised to.
    """

    node: Node
    dim: int
    exponent: float

    @property
    def name(self) -> str:
        """Names the sympy symbol of the scale chain, e.g. ``"l_q_.size(-1)**-0.5"``."""
        return f"{self.node.name}.size({self.dim})**{self.exponent}"


@dataclass(frozen=True)
class Reshaped:
    """A bias or mask met inside a shape round trip of the scores, in the scores' own shape.

    Swin's shifted windows add their mask on a view of the scores,
    ``(s.view(B/W, W, H, N, M) + mask.unsqueeze(1).unsqueeze(0)).view(B, H, N, M)``: an elementwise
    step on a row-major view is the same step on the scores with the operand taken through the same
    view, ``mask.expand(inner).reshape(outer)`` (the rewrite emits those two nodes).

    Attributes:
        node: the operand as the graph holds it (broadcastable to ``inner``).
        inner: the shape of the view the step applies to.
        outer: the scores' shape.
    """

    node: Node
    inner: tuple[int, ...]
    outer: tuple[int, ...]

    @property
    def name(self) -> str:
        """Names the sympy symbol of the scale chain."""
        return f"{self.node.name}.reshaped"


@dataclass
class AttentionSite:
    """An attention computation found in an FX graph, and what became of it.

    The site computes ``softmax(canonical(q @ kᵀ)) @ v`` where ``canonical`` applies
    ``score_ops`` (scales, biases, masks) in order; ``anchor`` is the node whose value the
    binary operator replaces, ``erase`` the nodes that become dead with it.

    Attributes:
        pattern: ``"sdpa"``, ``"softmax_attention"`` (unfused) or ``"multi_head_attention"``.
        spelling: the roles met along the site, e.g. ``"matmul>div>add>softmax>dropout>matmul"``.
        module_path: dotted path of the module that owns the site (``""`` for the root).
        anchor: the node replaced by the operator's output.
        q, k, v: nodes of the query, key and value as they enter the products.
        k_cols: k is given as ``(..., D, M)`` (it enters the product untransposed).
        v_cols: v is given as ``(..., Dv, M)``.
        score_ops: see ``ScoreOp``.
        causal: a top-left causal mask applies (SDPA ``is_causal``).
        gqa: SDPA ``enable_gqa`` was set.
        erase: nodes made dead by the rewrite, producers first.
        bypass: number scales above q or k whose factor joined the canonical scale: the
            rewrite makes their users read their input.
        scores_chain: nodes between Q·Kᵀ and the softmax input, which must have one user each.
        canonical: the ``CanonicalScores`` of ``score_ops`` once the decision computed it.
        blend: a ``match_blend.Blend`` when the probabilities are blended before P·V (the
            rewrite keeps the blend around the operator's output), else None.
        reason: why the site is not rewritten (a ``SkipReason``); None while it may be.
        status: ``REWRITTEN`` or ``SKIPPED`` once decided.
        details: facts for reports (shapes, scale, bias kind).
    """

    pattern: str
    spelling: str
    module_path: str
    anchor: Node
    q: Node | None = None
    k: Node | None = None
    v: Node | None = None
    k_cols: bool = False
    v_cols: bool = False
    score_ops: list[ScoreOp] = field(default_factory=list)
    causal: bool = False
    gqa: bool = False
    erase: list[Node] = field(default_factory=list)
    bypass: list[Node] = field(default_factory=list)
    scores_chain: list[Node] = field(default_factory=list)
    canonical: Any = None
    blend: Any = None
    reason: SkipReason | None = None
    status: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def report(self) -> SiteReport:
        """A ``SiteReport`` of this site."""
        reason = None if self.reason is None else self.reason.value  # the plain string users read
        return SiteReport(self.module_path, self.pattern, self.spelling, self.status, reason, dict(self.details))

    def skip(self, reason: SkipReason | None) -> None:
        """Mark the site skipped with ``reason`` (the first reason wins; None changes nothing).

        Raises:
            TypeError: ``reason`` is not a ``SkipReason`` (every reason is a member, listed in the README).
        """
        if reason is not None and not isinstance(reason, SkipReason):
            raise TypeError(f"reason must be a SkipReason member, got {type(reason).__name__} {reason!r}")
        if self.reason is None:
            self.reason = reason


@dataclass(frozen=True)
class SiteReport:
    """What happened to one attention site, without references into the graph.

    Attributes:
        module_path: dotted path of the owning module (``""`` for the root).
        pattern: ``"sdpa"``, ``"softmax_attention"`` or ``"multi_head_attention"``.
        spelling: the roles met along the site.
        status: ``"rewritten"`` or ``"skipped"``.
        reason: why it was skipped (a ``SkipReason`` value), None when rewritten; for an unmatched
            softmax, a sentence.
        details: shape ``(B, H, N, M, D, Dv)``, dtype, scale, bias kind where known;
            ``kernel_fallback``: why a rewritten CUDA site will run the reference (forward, backward).
    """

    module_path: str
    pattern: str
    spelling: str
    status: str
    reason: str | None
    details: dict[str, Any]


_INDEX = re.compile(r"\[['\"]?([^\]'\"]+)['\"]?\]")


def module_path(node: Node) -> str:
    """Dotted path of the innermost module a node came from, ``""`` for the root module.

    Dynamo records ``"L['self'].blocks[0].attn"``-like paths in ``nn_module_stack``;
    this returns ``"blocks.0.attn"``.
    """
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = _INDEX.sub(lambda m: "." + m.group(1), path)  # "L.self.blocks.0.attn"
    parts = [p for p in path.split(".") if p]
    if parts and parts[0] in ("L", "G"):  # the local or global that holds the root module
        parts = parts[2:]
    # "L['self'].__dict__['_modules']['blocks'][0]": the attribute dict spelled out
    return ".".join(p for p in parts if p not in ("__dict__", "_modules"))
