"""Find every attention site in a graph and decide what to do with it (no graph changes)."""
from __future__ import annotations

import logging

from torch.fx import Graph, Node

from bitlower.backend_config import BackendConfig
from bitlower.passes.decide import decide
from bitlower.passes.match_sdpa import match_fused_attention
from bitlower.passes.match_softmax import match_softmax_attention
from bitlower.passes.reasons import SkipReason
from bitlower.passes.site import AttentionSite, module_path

log = logging.getLogger(__name__)

# Tried in order on every node; the first that returns a site claims the node.
MATCHERS = (match_fused_attention, match_softmax_attention)


def _match(node: Node, config: BackendConfig) -> AttentionSite | None:
    """The decided site at ``node``; a matcher or check that raises gives a skipped site, not a crash."""
    site = None
    try:
        for match in MATCHERS:
            site = match(node)
            if site is not None:
                return decide(site, config)
    except Exception as err:  # noqa: BLE001  (the compile must go on with the site left as it is)
        log.warning("bitlower: attention analysis failed at %s (%s): %s", node.name, node.target, err)
        if site is None:
            site = AttentionSite("unknown", str(node.target), module_path(node), anchor=node)
        site.reason = SkipReason.ANALYSIS_ERROR
        site.details["error"] = f"{type(err).__name__}: {err}"
        return site
    return None


def find_attention(graph: Graph, config: BackendConfig | None = None) -> list[AttentionSite]:
    """Every attention site of ``graph`` in graph order, each with its decision made.

    Args:
        graph: a Dynamo-level FX graph (nodes carry ``example_value`` metadata).
        config: what to rewrite; the default ``BackendConfig()`` when None.

    Returns:
        the sites; ``site.reason`` is None for the ones the rewrite may replace.

    Example:
        >>> import torch
        >>> graphs = []
        >>> def keep(gm, example_inputs):
        ...     graphs.append(gm)
        ...     return gm.forward
        >>> fn = torch.compile(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        ...                    backend=keep, fullgraph=True)
        >>> _ = fn(*(torch.randn(1, 2, 16, 8) for _ in range(3)))
        >>> [(s.pattern, s.reason) for s in find_attention(graphs[0].graph)]
        [('sdpa', None)]
    """
    config = config or BackendConfig()
    sites = []
    for node in graph.nodes:
        site = _match(node, config)
        if site is not None:
            sites.append(site)
    return sites
