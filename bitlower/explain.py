"""``bitlower.explain``: every attention site of a model, where it is and what the backend does with it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from bitlower.backend import split_options
from bitlower.passes.rewrite_attention import SITES_META_KEY, UNMATCHED_META_KEY, rewrite_attention
from bitlower.passes.site import REWRITTEN, SiteReport

log = logging.getLogger(__name__)


@dataclass
class ExplainReport:
    """What ``torch.compile(model, backend="bitlower")`` does to each attention site.

    Attributes:
        sites: one ``SiteReport`` per site, in graph order (graphs in compile order).
        graphs: how many graphs Dynamo captured (1 without graph breaks).
        graph_breaks: the reasons Dynamo gave for each graph break.
        unmatched: softmaxes over a product of two activations that no site claims (they stay
            full precision), status ``"unmatched"``.
    """

    sites: list[SiteReport] = field(default_factory=list)
    unmatched: list[SiteReport] = field(default_factory=list)
    graphs: int = 0
    graph_breaks: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """``{"found": .., "rewritten": .., "skipped": ..}``, and ``"unmatched"`` when there are any."""
        rewritten = sum(s.status == REWRITTEN for s in self.sites)
        counts = {"found": len(self.sites), "rewritten": rewritten, "skipped": len(self.sites) - rewritten}
        if self.unmatched:
            counts["unmatched"] = len(self.unmatched)
        return counts

    def skipped(self) -> dict[str, int]:
        """Skipped sites counted by reason."""
        out: dict[str, int] = {}
        for s in self.sites:
            if s.status != REWRITTEN:
                out[s.reason] = out.get(s.reason, 0) + 1
        return out

    def fallbacks(self) -> dict[str, int]:
        """Rewritten sites whose CUDA call the fused kernels do not cover, counted by reason.

        Empty on CPU, where the reference is the path, not a fallback. The reasons are those
        ``torch.compile(backend="bitlower")`` adds to ``bitlower.counters["fallback"]`` per compile.
        """
        out: dict[str, int] = {}
        for s in self.sites:
            for reason in s.details.get("kernel_fallback", ()):
                out[reason] = out.get(reason, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [f"{'module':<32} {'pattern':<20} {'status':<10} reason / shape (B, H, N, M, D, Dv)"]
        for s in self.sites:
            info = s.reason if s.status != REWRITTEN else s.details.get("shape", "")
            if s.details.get("kernel_fallback"):
                info = f"{info}; reference on CUDA: " + "; ".join(s.details["kernel_fallback"])
            lines.append(f"{s.module_path or '<root>':<32} {s.pattern:<20} {s.status:<10} {info}")
        for s in self.unmatched:
            lines.append(f"{s.module_path or '<root>':<32} {s.spelling:<20} {s.status:<10} {s.reason}")
        c = self.counts
        lines.append(f"found {c['found']}, rewritten {c['rewritten']}, skipped {c['skipped']}, "
                     f"unmatched {len(self.unmatched)}; "
                     f"graphs {self.graphs}, graph breaks {len(self.graph_breaks)}")
        return "\n".join(lines)


def explain(model: torch.nn.Module, *example_inputs, options: Mapping[str, Any] | None = None,
            **example_kwargs) -> ExplainReport:
    """Report every attention site of ``model`` and what the bitlower backend does with it.

    Runs ``model(*example_inputs, **example_kwargs)`` once under Dynamo with a backend that
    applies the bitlower rewrite and then runs the rewritten graph eagerly (no Inductor),
    so the report matches ``torch.compile(model, backend="bitlower", options=options)``
    for the same inputs, the same train/eval mode and the caller's grad mode (call it under
    ``torch.no_grad()`` to see the inference graph: some modules, ``nn.TransformerEncoderLayer``
    among them, take other paths there).

    Args:
        model: the module (or any callable Dynamo can trace).
        example_inputs, example_kwargs: arguments of one call.
        options: bitlower options, as given to ``torch.compile``.

    Returns:
        an ``ExplainReport``; ``print(report)`` gives a table.

    Raises:
        ValueError: unknown or invalid options.

    Example:
        >>> import torch.nn.functional as F
        >>> report = explain(lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        ...                  *(torch.randn(1, 2, 16, 8) for _ in range(3)))
        >>> report.counts
        {'found': 1, 'rewritten': 1, 'skipped': 0}
    """
    config, _ = split_options(options)
    report = ExplainReport()

    def collect(gm: torch.fx.GraphModule, inputs):
        rewrite_attention(gm, config)
        report.sites.extend(gm.meta.pop(SITES_META_KEY, []))
        report.unmatched.extend(gm.meta.pop(UNMATCHED_META_KEY, []))
        report.graphs += 1
        return gm.forward

    breaks_before = len(torch._dynamo.utils.counters["graph_break"])
    reasons_before = dict(torch._dynamo.utils.counters["graph_break"])
    compiled = torch.compile(model, backend=collect)
    compiled(*example_inputs, **example_kwargs)
    after = torch._dynamo.utils.counters["graph_break"]
    report.graph_breaks = [r for r, n in after.items() for _ in range(n - reasons_before.get(r, 0))]
    if len(after) < breaks_before:
        log.warning("bitlower.explain: Dynamo counters were reset during the run")
    if report.graphs == 0:
        log.warning("bitlower.explain: Dynamo captured no graph (cached code or recompile limit reached); "
                    "torch._dynamo.reset() before explain() makes it trace afresh")
    return report
