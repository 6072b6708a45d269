"""The rewrite pass: replace every accepted attention site by the binary-attention operator.

For a site ``softmax(scale * F * q kᵀ + bias, masked) @ v`` it inserts

    q' = q * F            (runtime tensor scalars only; numbers go into ``scale``)
    k' = k (transposed back when it entered the product as (.., D, M))
    out = bitlower.binary_attention_fwd(q', k', v, None, None, bias', scale * S, ...)[0]

with ``(BH, N, D)`` layouts viewed as ``(1, BH, N, D)`` and the output cast to the dtype the
replaced node had. The replaced nodes (now dead) are erased, and so are the producers
they alone used (``torch.empty`` inputs of ``baddbmm(beta=0)``).

``S`` is the product of the chain's symbolic numbers (under dynamic shapes ``D ** -0.5``
with a symbolic ``D``), emitted as graph values; without them ``scale * S`` is a number.
The operator's schema types ``scale`` as ``float``, so its trace specializes a symbolic one
(a guard on its value: a new ``D`` recompiles, the result stays exact).
"""
from __future__ import annotations

import dataclasses
import logging
import operator

import sympy
import torch
from torch.fx import GraphModule, Node

from bitlower import ops
from bitlower.backend_config import BackendConfig
from bitlower.counters import counters
from bitlower.passes.emit import Emitter
from bitlower.passes.find_attention import find_attention
from bitlower.passes.kernel_fallback import call_fallback_reasons
from bitlower.passes.op_table import role_of, value_of
from bitlower.passes.reasons import SkipReason
from bitlower.passes.site import REWRITTEN, SKIPPED, AttentionSite, Reshaped, SizePower
from bitlower.passes.unmatched import find_unmatched

log = logging.getLogger(__name__)

OPERATOR = ops.FWD_OPERATOR
SITES_META_KEY = "bitlower_sites"
UNMATCHED_META_KEY = "bitlower_unmatched"
FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.empty_like, torch.zeros_like)


def causal_mask(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """SDPA's ``is_causal`` mask (top-left aligned): ``(N, M)`` bool, True where kept."""
    n, m = q.shape[-2], k.shape[-2]
    return torch.ones(n, m, dtype=torch.bool, device=q.device).tril()


def _runtime_value(emit: Emitter, factor: Node | SizePower) -> Node:
    """The graph node holding a runtime factor; a ``SizePower`` is computed by new nodes."""
    if not isinstance(factor, SizePower):
        return factor
    size = emit.method("size", factor.node, factor.dim)  # SymInt
    return emit.call(operator.pow, size, factor.exponent)  # SymFloat


def _times_powers(emit: Emitter, node, factors: list[tuple[Node | SizePower, int]]):
    """``node * prod(f ** power)`` over runtime factors (``node`` a graph node or a number)."""
    for factor, power in factors:
        factor = _runtime_value(emit, factor)
        if power == 1:
            node = emit.call(operator.mul, node, factor)
        elif power == -1:
            node = emit.call(operator.truediv, node, factor)
        else:
            node = emit.call(operator.mul, node, emit.call(operator.pow, factor, power))
    return node


def _scaled(emit: Emitter, node: Node, coef: sympy.Expr, nodes: dict) -> Node:
    """``node * coef`` with ``coef`` a number times powers of symbols of graph nodes."""
    number, rest = coef.as_coeff_Mul()
    powers = {} if rest == 1 else rest.as_powers_dict()
    node = _times_powers(emit, node, [(nodes[sym], int(power)) for sym, power in powers.items()])
    if number != 1:
        node = emit.call(operator.mul, node, float(number))
    return node


def _materialized(emit: Emitter, x):
    """A graph node for a bias or mask operand; a ``Reshaped`` one is taken through its view."""
    if not isinstance(x, Reshaped):
        return x
    full = emit.method("expand", x.node, *x.inner)  # the view's shape
    return emit.method("reshape", full, *x.outer)  # the scores' shape


def _operands(emit: Emitter, site: AttentionSite):
    """q', k', v in ``(B, H, L, D)`` and whether the site was ``(BH, L, D)``."""
    q, k, v = site.q, site.k, site.v
    q = _times_powers(emit, q, site.canonical.q_factors)
    if site.k_cols:
        k = emit.method("transpose", k, -2, -1)
    if site.v_cols:
        v = emit.method("transpose", v, -2, -1)
    flat = value_of(site.q).dim() == 3
    if flat:
        q, k, v = (emit.method("unsqueeze", x, 0) for x in (q, k, v))  # (1, BH, L, D)
    groups = value_of(q).shape[1] // value_of(k).shape[1]
    if groups > 1:  # grouped-query attention: each key head serves `groups` query heads
        k, v = (emit.method("repeat_interleave", x, groups, dim=1) for x in (k, v))
    return q, k, v, flat


def _bias(emit: Emitter, site: AttentionSite, q: Node, k: Node, flat: bool):
    """``(bias, bias_kind)`` for the operator: a dense float bias, a bool mask, or none."""
    canon = site.canonical
    dense = None
    for node, coef in canon.bias_terms:
        term = _scaled(emit, _materialized(emit, node), coef, canon.nodes)
        dense = term if dense is None else emit.call(operator.add, dense, term)
    keep = None
    for mask, kept in canon.masks:
        mask = _materialized(emit, mask)
        m = mask if kept else emit.call(torch.logical_not, mask)
        keep = m if keep is None else emit.call(torch.logical_and, keep, m)
    if site.causal:
        m = emit.call(causal_mask, q, k)
        keep = m if keep is None else emit.call(torch.logical_and, keep, m)
    if dense is not None and keep is not None:
        dense = emit.call(torch.where, keep, dense, float("-inf"))
    bias, kind = (dense, "dense") if dense is not None else (keep, "mask") if keep is not None else (None, "none")
    if flat and bias is not None and value_of(bias).dim() == 3:
        bias = emit.method("unsqueeze", bias, 0)  # (1, BH, N, M)
    return bias, kind


def _rows_without_keys(emit: Emitter, site: AttentionSite, v: Node, bias, kind: str, flat: bool, out: Node) -> Node:
    """The operator's output with rows that keep no key set to what the replaced code gives there.

    The operator gives such rows NaN (a softmax over -inf only) and no gradient. Eager differs in two
    cases: SDPA returns 0 (torch's ``_safe_softmax``: bool rows all False, float rows all -inf), and a
    finite fill (``masked_fill(m, finfo.min)``) makes every score of the row equal, so softmax is
    uniform and the row is the mean of v over the keys.
    """
    fill = site.canonical.finite_fill
    if fill is not None:
        mask, keep, _ = fill
        mask = _materialized(emit, mask)
        kept = mask if keep else emit.call(torch.logical_not, mask)
        dead = emit.call(torch.logical_not, emit.method("any", kept, -1, keepdim=True))  # (.., N, 1)
        if flat and value_of(dead).dim() == 3:
            dead = emit.method("unsqueeze", dead, 0)  # (1, BH, N, 1)
        return emit.call(torch.where, dead, emit.method("mean", v, -2, keepdim=True), out)  # v: (B, H, M, Dv)
    if site.pattern != "sdpa" or bias is None:
        return out
    if kind == "mask":
        dead = emit.call(torch.logical_not, emit.method("any", bias, -1, keepdim=True))  # (.., N, 1)
    else:
        dead = emit.method("all", emit.call(torch.isneginf, bias), -1, keepdim=True)
    return emit.call(torch.where, dead, 0.0, out)


def _weighted(emit: Emitter, weight, x: Node) -> Node:
    return x if isinstance(weight, (int, float)) and weight == 1 else emit.call(operator.mul, weight, x)


def _blended(emit: Emitter, site: AttentionSite, out: Node) -> Node:
    """The blend kept around the operator's output ``out`` (= P·V, rows of P summing to 1):
    ``(w1 out + w2 (R @ v)) / (w1 + w2 rowsum(R))``, without the division when the site has none."""
    blend = site.blend
    other = blend.other
    want = value_of(blend.pv_input).dtype
    if value_of(other).dtype != want:
        other = emit.method("to", other, want)
    other_pv = emit.copy(site.anchor, {blend.pv_input: other})  # the site's own P·V product, R for P
    num = emit.call(operator.add, _weighted(emit, blend.weight, out), _weighted(emit, blend.other_weight, other_pv))
    if not blend.renormalised:
        return num
    rows = emit.method("sum", blend.other, -1, keepdim=True)  # (.., N, 1)
    den = emit.call(operator.add, blend.weight, _weighted(emit, blend.other_weight, rows))  # w1 * rowsum(P) = w1
    return emit.call(operator.truediv, num, den)


def rewrite_site(gm: GraphModule, site: AttentionSite, config: BackendConfig) -> None:
    """Replace one accepted site by the operator (see the module docstring)."""
    emit = Emitter(gm.graph, site.anchor)
    q, k, v, flat = _operands(emit, site)
    bias, kind = _bias(emit, site, q, k, flat)
    save_bits = bool(value_of(site.anchor).requires_grad)  # traced under grad mode with grad-requiring inputs
    scale = _times_powers(emit, site.canonical.scale, site.canonical.scale_factors)  # a float or a SymFloat node
    spec = dataclasses.replace(config.attention.call_spec(1.0, bias_kind=kind), save_bits=save_bits)
    call = emit.call(OPERATOR, *spec.fwd_args(q, k, v, None, None, bias, scale=scale,  # scale: a float or a node
                                              kernel_options=config.kernel_options))
    out = emit.call(operator.getitem, call, 0)  # (B, H, N, Dv)
    out = _rows_without_keys(emit, site, v, bias, kind, flat, out)
    if flat:
        out = emit.method("squeeze", out, 0)  # (BH, N, Dv)
    want = value_of(site.anchor).dtype
    if value_of(out).dtype != want:
        out = emit.method("to", out, want)
    if site.blend is not None:
        out = _blended(emit, site, out)
    site.anchor.replace_all_uses_with(out)
    site.details["bias_kind"] = kind
    fallbacks = call_fallback_reasons(call)  # kept on the node; the backend's count_kernel_fallbacks counts it
    if fallbacks:
        site.details["kernel_fallback"] = fallbacks
    _erase_dead(gm, site.erase)
    for node in site.bypass:  # scalar factors now in `scale`: read the unscaled tensor
        source = next(x for x in (node.args + tuple(node.kwargs.values())) if isinstance(x, Node))
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)


def _erase_dead(gm: GraphModule, nodes: list[Node]) -> None:
    """Erase ``nodes`` (users first), then producers only they used and that have no effects."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    pending, erased = sorted(set(nodes), key=order.__getitem__, reverse=True), set()
    while pending:
        node = pending.pop(0)
        if node.users or node in erased:
            continue
        inputs = [x for x in node.all_input_nodes]
        gm.graph.erase_node(node)
        erased.add(node)
        for x in inputs:
            pure = x.op in ("call_function", "call_method") and (role_of(x) is not None or x.target in FACTORIES)
            if pure and not x.users:
                pending.append(x)
        pending.sort(key=order.__getitem__, reverse=True)


def _rewrite_or_skip(gm: GraphModule, site: AttentionSite, config: BackendConfig) -> None:
    """``rewrite_site``; if it raises before the operator's output is wired in, its new nodes are
    erased and the site is skipped (``rewrite_error``) instead of failing the compile."""
    before = set(gm.graph.nodes)
    try:
        rewrite_site(gm, site, config)
    except Exception as err:  # noqa: BLE001
        new = [n for n in gm.graph.nodes if n not in before]
        if any(user in before for n in new for user in n.users):
            raise  # the graph already reads the new nodes: no way back
        for node in reversed(new):
            gm.graph.erase_node(node)
        log.warning("bitlower: rewrite failed at %r, site left as it is: %s", site.module_path, err)
        site.reason = SkipReason.REWRITE_ERROR
        site.details["error"] = f"{type(err).__name__}: {err}"


def _record(sites: list[AttentionSite]) -> None:
    for site in sites:
        counters["sites_found"][site.pattern] += 1
        if site.status == REWRITTEN:
            counters["sites_rewritten"][site.pattern] += 1
            log.info("bitlower: rewrote %s at %r (%s)", site.pattern, site.module_path, site.spelling)
        else:
            counters["sites_skipped"][site.reason.value] += 1  # the plain string: keys users read
            log.info("bitlower: skipped %s at %r: %s", site.pattern, site.module_path, site.reason)


def rewrite_attention(gm: GraphModule, config: BackendConfig | None = None) -> GraphModule:
    """Rewrite every accepted attention site of ``gm`` to binary attention, in place.

    Args:
        gm: a Dynamo-level graph module.
        config: what to rewrite and how; the default ``BackendConfig()`` when None.

    Returns:
        ``gm``, recompiled; ``gm.meta["bitlower_sites"]`` lists a ``SiteReport`` per site.
        Counters: ``sites_found`` / ``sites_rewritten`` by pattern, ``sites_skipped`` by reason,
        ``sites_unmatched`` by spelling (``gm.meta["bitlower_unmatched"]`` lists them).
    """
    config = config or BackendConfig()
    sites = find_attention(gm.graph, config)
    unmatched = find_unmatched(gm.graph, sites)
    for report in unmatched:
        counters["sites_unmatched"][report.spelling] += 1
        log.info("bitlower: softmax over a product at %r left full precision: %s", report.module_path, report.reason)
    for site in sites:
        if site.reason is None:
            _rewrite_or_skip(gm, site, config)
        site.status = REWRITTEN if site.reason is None else SKIPPED
    _record(sites)
    if any(s.status == REWRITTEN for s in sites):
        gm.graph.lint()
        gm.recompile()
    gm.meta.setdefault(SITES_META_KEY, []).extend(site.report() for site in sites)
    gm.meta.setdefault(UNMATCHED_META_KEY, []).extend(unmatched)
    return gm
