"""The public property-testing kit: hypothesis-generated attention variants compile to binary attention."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitlower
from bitlower.testing import AttentionVariant, attention_variants, check_rewrite

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(variant=attention_variants(dtypes=(torch.float32, torch.bfloat16, torch.float64)), train=st.booleans())
def test_every_generated_variant_is_one_rewrite_equal_to_the_reference(variant, train):
    module = variant.module().train(train)
    if train and variant.dropout:
        module.dropout.p = 0.0  # active dropout is a documented skip (tests/passes)
    check_rewrite(module, variant.inputs(seed=7), variant.reference, inductor=False)


@settings(max_examples=2, deadline=None)
@given(variant=attention_variants(products=("operator", "sdpa", "baddbmm"), max_len=12))
def test_generated_variants_through_inductor(variant):
    check_rewrite(variant.module().eval(), variant.inputs(seed=8), variant.reference)


def test_check_rewrite_fails_on_a_wrong_reference():
    variant = AttentionVariant()
    wrong = lambda q, k, v, m: bitlower.binary_attention(q, k, v, scale=1.01 * variant.scale)  # noqa: E731
    with pytest.raises(AssertionError, match="output: max error"):
        check_rewrite(variant.module().eval(), variant.inputs(), wrong, inductor=False)


def test_check_rewrite_fails_when_nothing_is_rewritten():
    with pytest.raises(AssertionError, match="expected 1 rewritten attention site"):
        check_rewrite(lambda q, k, v: q + k + v, tuple(torch.randn(1, 1, 8, 8) for _ in range(3)),
                      lambda q, k, v: q + k + v, inductor=False)


def test_variant_inputs_are_seeded_and_masks_keep_a_key_per_query():
    variant = AttentionVariant(mask="bool", n=5, m=7)
    a, b = variant.inputs(seed=3), variant.inputs(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[3].any(-1).all()


def test_sdpa_variant_with_dropout_disabled_is_rewritten_in_train_mode():
    """Found by the property test: the SDPA form ignored a dropout probability set to 0."""
    module = AttentionVariant(product="sdpa", dropout=True, n=1, m=1, head_dim=8, value_dim=8).module().train()
    module.dropout.p = 0.0
    variant = module.variant
    check_rewrite(module, variant.inputs(seed=7), variant.reference, inductor=False)
