"""Einsum equations recognised as Q·Kᵀ and P·V products."""
import pytest

from bitlower.passes.einsum_forms import output_form, scores_form, split_equation


@pytest.mark.parametrize("eq, k_cols", [
    ("bhnd,bhmd->bhnm", False), ("bhnd,bhdm->bhnm", True), ("b i d, b j d -> b i j", False),
    ("...nd,...md->...nm", False), ("bhqd,bhkd->bhqk", False),
])
def test_scores_forms(eq, k_cols):
    assert scores_form(eq) is k_cols


@pytest.mark.parametrize("eq", [
    "bhnd,bhmd->bhmn",  # output transposed: softmax would run over queries
    "bnhd,bmhd->bhnm",  # heads in another position
    "bhnd,bhmd->bhnmd",  # no contraction
    "bhnd,bhnd->bhn",  # a dot per token, not a product
    "bhnd->bhn", "bhnd,bhmd,bhme->bhne", "iid,jd->ij", "b...nd,b...md->b...nm",
])
def test_other_equations_are_not_products(eq):
    assert scores_form(eq) is None


def test_output_forms():
    assert output_form("bhnm,bhmd->bhnd") is False
    assert output_form("bnm,bdm->bnd") is True
    assert output_form("bhnm,bhmd->bhdn") is None


def test_split_keeps_ellipsis_as_one_mark():
    assert split_equation("...nd, ...md -> ...nm") == ("*nd", "*md", "*nm")
