"""Decide, per attention site, whether the rewrite changes nothing but the Q·Kᵀ binarization.

Each check in ``CHECKS`` looks at one fact and returns a skip reason or None; the first
reason wins. The last check runs the operator's own input validation on meta tensors of
the shapes the rewrite will pass, so a site is never rewritten into a call the operator
rejects.
"""
from __future__ import annotations

import fnmatch
import math

import torch

from bitlower import validation
from bitlower.backend_config import BackendConfig
from bitlower.passes.op_table import is_tensor, value_of
from bitlower.passes.reasons import SkipReason
from bitlower.passes.scale_chain import Unsupported, canonicalize
from bitlower.passes.site import AttentionSite, Reshaped


def _int(d) -> int:
    """A concrete size: the hint of a symbolic one (decisions never add guards)."""
    return d if isinstance(d, int) else int(d.node.hint)


def _shape(x) -> tuple[int, ...]:
    if isinstance(x, Reshaped):
        return tuple(x.outer)
    return tuple(_int(d) for d in value_of(x).shape)


def logical_shapes(site: AttentionSite):
    """``q (.., N, D)``, ``k (.., M, D)``, ``v (.., M, Dv)`` as the operator sees them."""
    q, k, v = _shape(site.q), _shape(site.k), _shape(site.v)
    if site.k_cols:
        k = k[:-2] + (k[-1], k[-2])
    if site.v_cols:
        v = v[:-2] + (v[-1], v[-2])
    return q, k, v


def _check_exclusive(site, config):
    """The scores feed only the softmax: nothing else sees the values the rewrite changes."""
    if any(len(n.users) != 1 for n in site.scores_chain):
        return SkipReason.SCORES_REUSED
    return None


def _check_config_skip(site, config):
    if any(fnmatch.fnmatchcase(site.module_path, p) for p in config.skip):
        return SkipReason.SKIPPED_BY_CONFIG
    return None


def _check_tensors(site, config):
    if not all(is_tensor(x) for x in (site.q, site.k, site.v)):
        return SkipReason.OPERANDS_NOT_TENSORS
    q, k, v = logical_shapes(site)
    if not (len(q) == len(k) == len(v)) or len(q) not in (3, 4):
        return SkipReason.RANK
    if q[:-2] != k[:-2] or q[:-2] != v[:-2]:
        if not (site.gqa and len(q) == 4 and k[:-2] == v[:-2] and q[0] == k[0] and q[1] % k[1] == 0):
            return SkipReason.BROADCAST_BATCH
        if config.gqa == "skip":
            return SkipReason.GQA_BY_CONFIG
    if len({value_of(x).dtype for x in (site.q, site.k, site.v)}) != 1:
        return SkipReason.MIXED_DTYPES
    if q[-2] < config.min_seq_len:
        return SkipReason.SHORT_SEQUENCE
    return None


def factor_axes(shape: tuple[int, ...], scores: tuple[int, ...]) -> str:
    """Which axes of the scores a tensor of ``shape`` varies over once broadcast against them.

    Returns ``"head"`` (one value per (batch, head): size 1 on the query and key axes),
    ``"query"`` (varies over queries only), ``"key"`` (over keys only), ``"score"`` (over both)
    or ``"grows"`` (broadcasting changes the scores' shape).
    """
    try:
        if torch.broadcast_shapes(shape, scores) != torch.Size(scores):
            return "grows"
    except RuntimeError:
        return "grows"
    padded = (1, 1) + tuple(shape)
    per_query, per_key = padded[-2] != 1, padded[-1] != 1
    return {(False, False): "head", (True, False): "query", (False, True): "key"}.get((per_query, per_key), "score")


# A factor multiplying the scores folds into q only when it is one number per (batch, head):
# (f q) kᵀ = f (q kᵀ) exactly, and mean_abs keeps f (sgn(f q) = sgn(f) sgn(q), mean|f q| = |f| mean|q|).
# A per-key factor does not commute with q at all; a per-query one would need a per-token
# weighting a_i = f_i mean|q| (mean_abs has one a per (batch, head)); a per-score one is no scale.
FACTOR_REASONS = {"query": SkipReason.SCORE_FACTOR_PER_QUERY, "key": SkipReason.SCORE_FACTOR_PER_KEY,
                  "score": SkipReason.SCORE_FACTOR_SHAPE, "grows": SkipReason.SCORE_FACTOR_SHAPE}


def _scores_value(site):
    return value_of(site.scores_chain[0]) if site.scores_chain else None


def _check_operands_keep_dtype(site, canon) -> SkipReason | None:
    """Factors and biases must not promote the scores' dtype (eager's softmax would run in another one)."""
    scores = _scores_value(site)
    if not isinstance(scores, torch.Tensor):
        return None
    for node in [n for n, _ in canon.q_factors] + [n for n, _ in canon.bias_terms]:
        value = value_of(node.node if isinstance(node, Reshaped) else node)
        if isinstance(value, torch.Tensor) and torch.result_type(scores, value) != scores.dtype:
            return SkipReason.SCORE_OPERAND_DTYPE
    return None


def _check_factor_axes(site, canon) -> SkipReason | None:
    scores = _scores_value(site)
    for node, _ in canon.q_factors:
        value = value_of(node)
        if isinstance(value, torch.Tensor) and isinstance(scores, torch.Tensor):
            reason = FACTOR_REASONS.get(factor_axes(_shape(node), _shape(site.scores_chain[0])))
            if reason is not None:
                return reason
    return None


def _check_scores(site, config):
    try:
        site.canonical = canonicalize(site.score_ops)
    except Unsupported as err:
        return err.reason
    canon = site.canonical
    reason = _check_factor_axes(site, canon) or _check_operands_keep_dtype(site, canon)
    if reason is not None:
        return reason
    if canon.q_factors and config.attention.weighting != "mean_abs":
        return SkipReason.RUNTIME_SCALE_NEEDS_MEAN_ABS  # sgn(q * s) drops s; only mean|q * s| keeps it
    if (canon.bias_terms or canon.masks) and config.masks == "skip":
        return SkipReason.MASK_BY_CONFIG
    if site.causal and config.causal == "skip":
        return SkipReason.CAUSAL_BY_CONFIG
    return None


def bias_shape(site: AttentionSite) -> tuple[int, ...] | None:
    """Broadcast shape of every bias and mask of the site (scores rank), or None without any."""
    shapes = [_shape(n) for n, _ in site.canonical.bias_terms] + [_shape(n) for n, _ in site.canonical.masks]
    if site.causal:
        q, k, _ = logical_shapes(site)
        shapes.append((q[-2], k[-2]))
    return torch.broadcast_shapes(*shapes) if shapes else None


def _check_operator(site, config):
    q, k, v = logical_shapes(site)
    dtype = value_of(site.q).dtype
    if len(q) == 3:
        q, k, v = ((1,) + s for s in (q, k, v))
    if site.gqa:
        k = k[:1] + (q[1],) + k[2:]
        v = v[:1] + (q[1],) + v[2:]
    meta = [torch.empty(s, dtype=dtype, device="meta") for s in (q, k, v)]
    try:
        shape = bias_shape(site)
        validation.check_qkv(*meta)
        validation.check_scale(site.canonical.scale)
        if shape is not None:
            shape = (1,) + shape if len(shape) == 3 and len(_shape(site.q)) == 3 else shape
            kind = "dense" if site.canonical.bias_terms else "mask"
            bias = torch.empty(shape, dtype=dtype if kind == "dense" else torch.bool, device="meta")
            validation.check_bias(bias, kind, None, *meta[:2])
    except (ValueError, TypeError, RuntimeError) as err:
        site.details["operator_error"] = str(err)
        return SkipReason.OPERATOR_REJECTS
    site.details.update(shape=tuple(meta[0].shape[:3]) + (meta[1].shape[2], q[-1], v[-1]), dtype=str(dtype),
                        scale=site.canonical.scale_for_report())
    return None


CHECKS = (_check_exclusive, _check_config_skip, _check_tensors, _check_scores, _check_operator)


def decide(site: AttentionSite, config: BackendConfig) -> AttentionSite:
    """Run ``CHECKS`` on ``site`` (unless matching already found a reason); sets ``site.reason``."""
    for check in CHECKS:
        if site.reason is not None:
            break
        site.skip(check(site, config))
    if site.reason is None and not math.isfinite(site.canonical.scale):
        site.skip(SkipReason.SCALE_NOT_FINITE)
    return site
