"""Find fused attention calls: ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``.

SDPA arguments become the same ``ScoreOp`` steps the unfused matcher records: ``scale``
(default ``D ** -0.5``, a ``SizePower`` when ``D`` is symbolic), a float ``attn_mask`` as an
additive bias, a bool one as a mask.
``is_causal`` and ``enable_gqa`` are recorded; the decision step rewrites or skips them.

``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer``) reaches the Dynamo graph
as one opaque ``F.multi_head_attention_forward`` call: the site is reported and skipped
("multi_head_attention_opaque"), never rewritten.
"""
from __future__ import annotations

from torch.fx import Node

from bitlower.passes.match_softmax import _is_dropout_active
from bitlower.passes.op_table import Role, is_number, role_of, value_of
from bitlower.passes.reasons import SkipReason
from bitlower.passes.site import AttentionSite, ScoreOp, SizePower, module_path


def _sdpa_site(role: Role) -> AttentionSite:
    node = role.node
    q, k, v = role.args["query"], role.args["key"], role.args["value"]
    site = AttentionSite("sdpa", "scaled_dot_product_attention", module_path(node), anchor=node, q=q, k=k, v=v)
    site.erase = [node]
    scale = role.args["scale"]
    if scale is None:  # SDPA's default D ** -0.5; a symbolic D under dynamic shapes
        head_dim = value_of(q).shape[-1]
        scale = head_dim ** -0.5 if isinstance(head_dim, int) else SizePower(q, -1, -0.5)
    site.score_ops.append(ScoreOp("scale", scale))
    mask = role.args["attn_mask"]
    if mask is not None:
        is_bool = value_of(mask).dtype.is_floating_point is False
        site.score_ops.append(ScoreOp("mask", mask, keep=True) if is_bool else ScoreOp("bias", mask))
    site.causal = role.args["is_causal"] is True
    if not is_number(role.args["is_causal"]) and not isinstance(role.args["is_causal"], bool):
        site.skip(SkipReason.SYMBOLIC_IS_CAUSAL)
    site.gqa = role.args["enable_gqa"] is True
    dropout = Role("dropout", node, {"p": role.args["dropout_p"], "training": True})
    if _is_dropout_active(dropout):
        site.skip(SkipReason.ACTIVE_DROPOUT)
    return site


def _mha_site(role: Role) -> AttentionSite:
    node = role.node
    site = AttentionSite("multi_head_attention", "multi_head_attention_forward", module_path(node), anchor=node)
    site.skip(SkipReason.MULTI_HEAD_ATTENTION_OPAQUE)
    return site


MATCHERS = {"sdpa": _sdpa_site, "mha": _mha_site}


def match_fused_attention(node: Node) -> AttentionSite | None:
    """The site of a fused attention call at ``node``, or None when ``node`` is not one."""
    role = role_of(node)
    if role is None or role.name not in MATCHERS:
        return None
    return MATCHERS[role.name](role)
