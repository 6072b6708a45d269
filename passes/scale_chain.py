"""Canonicalise the steps between Q·Kᵀ and the softmax into one scale, one bias and masks.

The steps (``ScoreOp``, in the order applied) are replayed symbolically with sympy: ``QK``
stands for the raw product, each graph value that scales or biases the scores gets a
symbol, and Python numbers enter as exact rationals. Expanding the result gives

    scores = scale * S * F * QK + sum_i c_i * bias_i        (masks applied last)

with ``scale`` a number, ``S`` a product of symbolic numbers (``SymFloat`` / ``SymInt`` graph
values and ``SizePower``s under dynamic shapes; the rewrite passes ``scale * S`` to the
operator as a graph value), ``F`` a product of runtime tensor scalars (folded into q by the
rewrite) and ``c_i`` the coefficient of each bias. The canonical form is checked equal to the
replayed chain with ``sympy.simplify(chain - canonical) == 0`` before it is used; a chain
that is not of this form (scores squared, a bias multiplied by another bias, a mask
followed by a scale that does not keep -inf at -inf) raises ``Unsupported``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch.fx import Node

from bitlower.passes.op_table import is_number, value_of
from bitlower.passes.reasons import SkipReason
from bitlower.passes.site import Reshaped, ScoreOp, SizePower

QK = sympy.Symbol("QK")


class Unsupported(Exception):
    """The score chain cannot be expressed as the operator's scale, bias and mask."""

    def __init__(self, reason: SkipReason):
        super().__init__(reason)
        self.reason = reason


@dataclass
class CanonicalScores:
    """``scores = scale * prod(scale_factors) * prod(q_factors) * QK + sum(coef * bias)``, then the masks.

    Attributes:
        scale: the number multiplying the product (the operator's ``scale`` with no ``scale_factors``).
        q_factors: ``(node, power)`` runtime tensor scalars multiplied into q.
        scale_factors: ``(node or SizePower, power)`` symbolic numbers multiplied into the
            operator's ``scale``, which then is a graph value.
        bias_terms: ``(node, coef)`` with ``coef`` a sympy product of a number and factor symbols.
        masks: ``(node, keep)``: scores survive where the bool node equals ``keep``.
        finite_fill: ``(node, keep, fill)`` when the one mask sets scores to a finite ``fill``
            (eager then gives a row masked everywhere the uniform average of v, not NaN).
        nodes: symbol -> graph node (or ``SizePower``) for every symbol in ``bias_terms`` coefficients.
        proof: the identity that was checked, for reports.
    """

    scale: float
    q_factors: list[tuple[Node, int]] = field(default_factory=list)
    bias_terms: list[tuple[Node, sympy.Expr]] = field(default_factory=list)
    masks: list[tuple[Node, bool]] = field(default_factory=list)
    nodes: dict[sympy.Symbol, Node | SizePower] = field(default_factory=dict)
    proof: str = ""
    scale_factors: list[tuple[Node | SizePower, int]] = field(default_factory=list)
    finite_fill: tuple[Node, bool, float] | None = None

    def scale_for_report(self) -> float | str:
        """The operator's scale: the number, or ``"0.5 * l_q_.size(-1)**-0.5"`` when symbolic."""
        if not self.scale_factors:
            return self.scale
        terms = [f.name if p == 1 else f"({f.name})**{p}" for f, p in self.scale_factors]
        return " * ".join([f"{self.scale:g}"] + terms)


def _number(x) -> sympy.Expr:
    return sympy.Integer(x) if isinstance(x, int) else sympy.Rational(x)  # exact binary value


def is_symbolic_number(x: Any) -> bool:
    """A number known only at run time: a ``SizePower`` or a node holding a ``SymInt`` / ``SymFloat``."""
    return isinstance(x, SizePower) or (
        isinstance(x, Node) and isinstance(value_of(x), (torch.SymInt, torch.SymFloat)))


class _Symbols:
    """One sympy symbol per graph node (or ``SizePower``), named after it."""

    def __init__(self):
        self.by_node: dict[Node | SizePower, sympy.Symbol] = {}

    def of(self, x: Any) -> sympy.Expr:
        if is_number(x):
            return _number(x)
        if not isinstance(x, (Node, SizePower, Reshaped)):  # e.g. a SymFloat no graph node holds
            raise Unsupported(SkipReason.OPAQUE_SCALE_OPERAND)
        if x not in self.by_node:
            self.by_node[x] = sympy.Symbol(f"n_{x.name}")
        return self.by_node[x]


def _replay(ops: list[ScoreOp], symbols: _Symbols):
    """The chain as a sympy expression, the bias symbols, and the masks."""
    expr, biases, masks = QK, [], []
    for op in ops:
        if op.kind == "unsupported":
            raise Unsupported(op.operand)
        if op.kind == "scale":
            keeps_neg_inf = is_number(op.operand) and op.operand > 0
            if masks and not keeps_neg_inf:
                raise Unsupported(SkipReason.MASK_THEN_SCALE)
            if is_number(op.operand) and op.operand == 0:
                raise Unsupported(SkipReason.ZERO_SCALE)
            expr = expr * symbols.of(op.operand) ** op.power
        elif op.kind == "bias":
            if any(m.fill != -math.inf for m in masks):
                raise Unsupported(SkipReason.BIAS_AFTER_FINITE_FILL)  # masked scores would not all equal the fill
            biases.append(symbols.of(op.operand))
            expr = expr + symbols.of(op.coef) * biases[-1]
        elif op.kind == "mask":
            masks.append(op)
    if len(masks) > 1 and any(m.fill != -math.inf for m in masks):
        raise Unsupported(SkipReason.FINITE_FILL_WITH_OTHER_MASKS)  # fully masked rows would mix fills
    return expr, biases, masks


def canonicalize(ops: list[ScoreOp]) -> CanonicalScores:
    """Collapse a score chain into one scale, folded runtime scalars, biases and masks.

    Raises:
        Unsupported: the chain is not ``scale * QK + bias`` up to masks; ``reason`` says why.

    Example:
        >>> c = canonicalize([ScoreOp("scale", 0.5), ScoreOp("scale", 2.0, power=-1)])
        >>> c.scale, c.proof
        (0.25, 'QK/4 == QK/4')
    """
    symbols = _Symbols()
    expr, biases, masks = _replay(ops, symbols)
    expanded = sympy.expand(expr)
    qk_coeff = expanded.coeff(QK, 1)
    remainder = sympy.expand(expanded - qk_coeff * QK)
    if qk_coeff.has(QK) or remainder.has(QK) or qk_coeff == 0:
        raise Unsupported(SkipReason.NONLINEAR_SCORES)
    number, runtime = qk_coeff.as_coeff_Mul()
    node_of = {sym: node for node, sym in symbols.by_node.items()}
    q_factors, scale_factors = [], []
    for base, power in ({} if runtime == 1 else runtime.as_powers_dict()).items():
        if base not in node_of or base in biases or not power.is_integer:
            raise Unsupported(SkipReason.SCORE_FACTOR_FORM)
        factors = scale_factors if is_symbolic_number(node_of[base]) else q_factors
        factors.append((node_of[base], int(power)))
    bias_terms = []
    for sym in dict.fromkeys(biases):
        coef = remainder.coeff(sym, 1)
        if any(coef.has(b) for b in biases):
            raise Unsupported(SkipReason.NONLINEAR_BIAS)
        bias_terms.append((node_of[sym], coef))
    canonical = number * runtime * QK + sum((c * node_of_sym for node_of_sym, c in
                                             ((symbols.of(n), c) for n, c in bias_terms)), sympy.Integer(0))
    if sympy.simplify(expr - canonical) != 0:
        raise Unsupported(SkipReason.SCALE_CHAIN_NOT_PROVEN)
    finite = [(m.operand, m.keep, m.fill) for m in masks if m.fill != -math.inf]
    return CanonicalScores(float(number), q_factors, bias_terms, [(m.operand, m.keep) for m in masks], node_of,
                           f"{expr} == {canonical}", scale_factors, finite[0] if finite else None)
