"""Which two-operand ``einsum`` equations are attention products.

Letters name dims; ``B`` below stands for the shared batch letters (any number, or a
leading ``...``), which must appear in the same order in both operands and the output.

    scores Q·Kᵀ:  "B n d, B m d -> B n m"   (or "B n d, B d m -> B n m": k given transposed)
    output P·V:   "B n m, B m e -> B n e"   (or "B n m, B e m -> B n e": v given transposed)
"""
from __future__ import annotations

ELLIPSIS = "..."


def split_equation(equation: str) -> tuple[str, str, str] | None:
    """``(first, second, out)`` subscripts of a two-operand equation, ``...`` kept as one mark."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != 2:
        return None
    parts = (terms[0], terms[1], out)
    if any(ELLIPSIS in p for p in parts):
        if not all(p.startswith(ELLIPSIS) and p.count(ELLIPSIS) == 1 for p in parts):
            return None
        parts = tuple("*" + p[len(ELLIPSIS):] for p in parts)  # '*' stands for the ellipsis
    if any(len(set(p)) != len(p) for p in parts):
        return None  # repeated letters: diagonals or traces, not a product
    return parts


def _product_form(equation: str) -> bool | None:
    """For ``"B i c, B {j c | c j} -> B i j"``: whether the second operand is given as ``(c, j)``."""
    parts = split_equation(equation)
    if parts is None:
        return None
    first, second, out = parts
    if len(out) < 2:
        return None
    batch, i, j = out[:-2], out[-2], out[-1]
    if len(first) != len(out) or first[:-2] != batch or first[-2] != i:
        return None
    c = first[-1]
    if c in out:
        return None
    if second == batch + j + c:
        return False
    if second == batch + c + j:
        return True
    return None


def scores_form(equation: str) -> bool | None:
    """Whether ``equation`` computes Q·Kᵀ: None if not, else whether k is given as ``(.., D, M)``.

    Example:
        >>> scores_form("bhnd,bhmd->bhnm"), scores_form("b i d, b d j -> b i j"), scores_form("ij,jk->ik")
        (False, True, True)
    """
    return _product_form(equation)


def output_form(equation: str) -> bool | None:
    """Whether ``equation`` computes P·V: None if not, else whether v is given as ``(.., Dv, M)``.

    Example:
        >>> output_form("bhnm,bhmd->bhnd"), output_form("bij,bdj->bid")
        (False, True)
    """
    second_is_contraction_first = _product_form(equation)
    return None if second_is_contraction_first is None else not second_is_contraction_first
