"""Softmaxes over a product of two activations that no matcher claimed (analysis only).

A softmax whose input comes, through any elementwise or layout steps, from a matrix product of two
activations (tensors computed from the graph's inputs, not only from parameters and buffers) looks
like attention. When no site claims it (a step the matcher does not know, probabilities that never
meet a product), it stays full precision; ``find_unmatched`` reports it so the user sees what was
not binarized (``bitlower.explain``; counter ``sites_unmatched`` by spelling).
"""
from __future__ import annotations

from torch.fx import Graph, Node

from bitlower.passes.match_softmax import scores_product
from bitlower.passes.op_table import role_of
from bitlower.passes.site import AttentionSite, SiteReport, module_path

UNMATCHED = "unmatched"
MAX_STEPS = 12  # nodes walked up from a softmax to its product: attention chains are short
WEIGHT_MARKS = ("_parameters_", "_buffers_")  # how Dynamo names lifted parameters and buffers


def _is_weight(placeholder: Node) -> bool:
    return placeholder.op == "get_attr" or any(m in str(placeholder.target) for m in WEIGHT_MARKS)


def is_activation(x, memo: dict) -> bool:
    """Whether ``x`` depends on a graph input that is not a parameter or buffer."""
    if not isinstance(x, Node):
        return False
    if x not in memo:
        memo[x] = False  # cycles cannot happen in a graph; this also bounds repeated visits
        if x.op == "placeholder":
            memo[x] = not _is_weight(x)
        else:
            memo[x] = any(is_activation(i, memo) for i in x.all_input_nodes)
    return memo[x]


def _product_above(x: Node, memo: dict) -> Node | None:
    """The nearest matrix product of two activations above ``x`` (breadth first, ``MAX_STEPS`` nodes)."""
    queue, seen = [x], set()
    while queue and len(seen) < MAX_STEPS:
        node = queue.pop(0)
        if node in seen:
            continue
        seen.add(node)
        role = role_of(node)
        found = scores_product(role) if role is not None else None
        if found is not None:
            q, k = found[0], found[1]
            return node if is_activation(q, memo) and is_activation(k, memo) else None
        queue.extend(node.all_input_nodes)
    return None


def find_unmatched(graph: Graph, sites: list[AttentionSite]) -> list[SiteReport]:
    """A report (status ``"unmatched"``) for each softmax over a product of activations no site claims."""
    claimed = {n for s in sites for n in [s.anchor, *s.erase]}
    memo: dict = {}
    reports = []
    for node in graph.nodes:
        role = role_of(node)
        if role is None or role.name != "softmax" or node in claimed:
            continue
        product = _product_above(role.args["input"], memo) if isinstance(role.args["input"], Node) else None
        if product is not None:
            spelling = f"{role_of(product).name}>..>softmax"
            reports.append(SiteReport(module_path(node), "softmax_attention", spelling, UNMATCHED,
                                      "no matcher recognised the steps around this softmax", {"node": node.name}))
    return reports
