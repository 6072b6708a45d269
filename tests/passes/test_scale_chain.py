"""Canonicalisation of the score chain: one scale, biases with coefficients, masks, refusals."""
import math

import pytest
import sympy
import torch
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from bitlower.passes.scale_chain import QK, Unsupported, canonicalize
from bitlower.passes.site import ScoreOp, SizePower


def _graph_nodes(*names):
    graph = torch.fx.Graph()
    return [graph.placeholder(n) for n in names]


@pytest.mark.parametrize("ops, scale", [
    ([ScoreOp("scale", 0.125)], 0.125),
    ([ScoreOp("scale", 8.0, power=-1)], 0.125),
    ([ScoreOp("scale", 64 ** -0.25), ScoreOp("scale", 64 ** -0.25)], 0.125),
    ([ScoreOp("scale", 2), ScoreOp("scale", math.sqrt(64), power=-1), ScoreOp("scale", 0.5)], 0.125),
])
def test_number_scales_collapse_to_one(ops, scale):
    assert canonicalize(ops).scale == pytest.approx(scale, rel=1e-15)


def test_bias_under_a_later_scale_gets_the_scale_as_coefficient():
    bias, = _graph_nodes("bias")
    canon = canonicalize([ScoreOp("bias", bias, coef=1.0), ScoreOp("scale", 0.5)])
    assert canon.scale == 0.5
    assert canon.bias_terms == [(bias, sympy.Rational(1, 2))]


def test_runtime_factor_is_folded_into_q_and_into_later_bias_coefficients():
    t, bias = _graph_nodes("t", "bias")
    canon = canonicalize([ScoreOp("scale", t, power=-1), ScoreOp("bias", bias), ScoreOp("scale", 3.0)])
    assert canon.scale == 3.0
    assert canon.q_factors == [(t, -1)]
    assert canon.bias_terms[0][1] == 3


def test_masks_are_kept_in_order_with_their_polarity():
    m1, m2 = _graph_nodes("m1", "m2")
    canon = canonicalize([ScoreOp("scale", 0.1), ScoreOp("mask", m1, keep=False), ScoreOp("mask", m2, keep=True),
                          ScoreOp("scale", 2.0)])
    assert canon.masks == [(m1, False), (m2, True)]
    assert canon.scale == pytest.approx(0.2)


@pytest.mark.parametrize("ops_fn, reason", [
    (lambda m, t: [ScoreOp("mask", m, keep=False), ScoreOp("scale", -1.0)], "mask_then_scale"),
    (lambda m, t: [ScoreOp("mask", m, keep=False), ScoreOp("scale", t)], "mask_then_scale"),
    (lambda m, t: [ScoreOp("scale", 0)], "zero_scale"),
    (lambda m, t: [ScoreOp("unsupported", "masked_fill_value")], "masked_fill_value"),
    (lambda m, t: [ScoreOp("bias", t), ScoreOp("scale", t)], "score_factor_form"),
])
def test_chains_outside_the_operator_form_are_refused(ops_fn, reason):
    m, t = _graph_nodes("m", "t")
    with pytest.raises(Unsupported) as err:
        canonicalize(ops_fn(m, t))
    assert err.value.reason == reason


def test_proof_states_the_checked_identity():
    canon = canonicalize([ScoreOp("scale", 0.5), ScoreOp("scale", 4, power=-1)])
    assert canon.proof == f"{QK / 8} == {QK / 8}"


def test_symbolic_size_scale_goes_to_the_operator_scale_not_into_q():
    q, = _graph_nodes("q")
    default = SizePower(q, -1, -0.5)  # SDPA's D ** -0.5 with a symbolic D (dynamic=True)
    canon = canonicalize([ScoreOp("scale", default), ScoreOp("scale", 2.0, power=-1)])
    assert (canon.scale, canon.scale_factors, canon.q_factors) == (0.5, [(default, 1)], [])
    assert canon.scale_for_report() == "0.5 * q.size(-1)**-0.5"


def test_symfloat_node_factor_goes_to_the_operator_scale():
    t, = _graph_nodes("t")
    t.meta["example_value"] = ShapeEnv().create_unbacked_symfloat()  # e.g. q.shape[-1] ** -0.5 traced
    canon = canonicalize([ScoreOp("scale", t)])
    assert (canon.scale, canon.scale_factors, canon.q_factors) == (1.0, [(t, 1)], [])


def test_a_symbolic_value_no_node_holds_is_refused_not_crashed():
    with pytest.raises(Unsupported) as err:  # was AttributeError: 'SymFloat' object has no attribute 'name'
        canonicalize([ScoreOp("scale", ShapeEnv().create_unbacked_symfloat())])
    assert err.value.reason == "opaque_scale_operand"
