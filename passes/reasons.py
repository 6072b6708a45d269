"""Why an attention site is left full precision: ``SkipReason``, one member per reason.

A member is a ``str`` (``enum.StrEnum``): it compares and hashes equal to its value, and the
counters and site reports carry the plain value (``counters["sites_skipped"]["scores_reused"]``,
``SiteReport.reason == "scores_reused"``), so the strings users read stay as they are.
``passes/README.md`` lists every member (``tests/passes/test_skip_reasons.py`` checks it).
"""
from __future__ import annotations

import enum


class SkipReason(enum.StrEnum):
    """The reasons ``bitlower.passes`` gives for leaving a site alone, grouped by where they arise."""

    # the probabilities and the P·V product (match_softmax, match_sdpa)
    PROBABILITIES_REUSED = "probabilities_reused"
    PROBABILITIES_UNUSED = "probabilities_unused"
    PROBABILITIES_NOT_MULTIPLIED_BY_V = "probabilities_not_multiplied_by_v"
    ACTIVE_DROPOUT = "active_dropout"
    SOFTMAX_DIM_IMPLICIT = "softmax_dim_implicit"
    SOFTMAX_DIM_NOT_CONSTANT = "softmax_dim_not_constant"
    SOFTMAX_NOT_OVER_KEYS = "softmax_not_over_keys"
    SYMBOLIC_IS_CAUSAL = "symbolic_is_causal"
    MULTI_HEAD_ATTENTION_OPAQUE = "multi_head_attention_opaque"
    # blended probabilities (match_blend)
    PROBABILITIES_BLENDED = "probabilities_blended"
    BLEND_WEIGHT_PER_QUERY = "blend_weight_per_query"
    BLEND_WEIGHT_PER_KEY = "blend_weight_per_key"
    BLEND_WEIGHT_SHAPE = "blend_weight_shape"
    BLEND_OTHER_READS_QK = "blend_other_reads_qk"
    BLEND_SHAPE = "blend_shape"
    BLEND_DTYPE = "blend_dtype"
    BLEND_REUSED = "blend_reused"
    # the score chain (match_softmax steps, scale_chain)
    MASKED_FILL_VALUE = "masked_fill_value"
    FACTOR_IN_SHAPE_ROUND_TRIP = "factor_in_shape_round_trip"
    OPAQUE_SCALE_OPERAND = "opaque_scale_operand"
    MASK_THEN_SCALE = "mask_then_scale"
    ZERO_SCALE = "zero_scale"
    BIAS_AFTER_FINITE_FILL = "bias_after_finite_fill"
    FINITE_FILL_WITH_OTHER_MASKS = "finite_fill_with_other_masks"
    NONLINEAR_SCORES = "nonlinear_scores"
    SCORE_FACTOR_FORM = "score_factor_form"
    NONLINEAR_BIAS = "nonlinear_bias"
    SCALE_CHAIN_NOT_PROVEN = "scale_chain_not_proven"
    # the decision (decide)
    SCORES_REUSED = "scores_reused"
    SKIPPED_BY_CONFIG = "skipped_by_config"
    OPERANDS_NOT_TENSORS = "operands_not_tensors"
    RANK = "rank"
    BROADCAST_BATCH = "broadcast_batch"
    GQA_BY_CONFIG = "gqa_by_config"
    MIXED_DTYPES = "mixed_dtypes"
    SHORT_SEQUENCE = "short_sequence"
    SCORE_FACTOR_PER_QUERY = "score_factor_per_query"
    SCORE_FACTOR_PER_KEY = "score_factor_per_key"
    SCORE_FACTOR_SHAPE = "score_factor_shape"
    SCORE_OPERAND_DTYPE = "score_operand_dtype"
    RUNTIME_SCALE_NEEDS_MEAN_ABS = "runtime_scale_needs_mean_abs"
    MASK_BY_CONFIG = "mask_by_config"
    CAUSAL_BY_CONFIG = "causal_by_config"
    OPERATOR_REJECTS = "operator_rejects"
    SCALE_NOT_FINITE = "scale_not_finite"
    # failures caught so the compile goes on (find_attention, rewrite_attention)
    ANALYSIS_ERROR = "analysis_error"
    REWRITE_ERROR = "rewrite_error"
