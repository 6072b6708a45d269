"""Named event counters: ``counters[group][name] += 1`` (read them in tests and reports).

Groups bitlower counts in:
- ``sites_found`` / ``sites_rewritten`` (by pattern), ``sites_skipped`` (by reason): each graph
  the rewrite pass sees (``bitlower.passes.rewrite_attention``); under the backend, each graph
  whose compile completes (``kept_on_success``).
- ``sites_unmatched`` (by spelling): softmaxes over a product of two activations that feed a
  product again but that no matcher recognised as attention (reported, never rewritten).
- ``softmax_axis_guarded`` (by axis): softmaxes over a non-last axis the backend hands Inductor in
  a form its attention pattern cannot miscompile (``bitlower.passes.softmax_axis_guard``).
- ``where_fill_saturated`` (by dtype): ``where`` fills beyond the dtype's range written as eager's rounding
  of them (``bitlower.passes.saturate_fills``).
- ``fallback`` (by reason): operator calls on CUDA that run the exact reference because the fused
  kernels do not cover them. An eager call counts each time it runs; under
  ``torch.compile(backend="bitlower")`` each operator call site counts once per compiled graph
  (forward, plus backward when differentiated), whether or not Inductor's caches hit
  (``bitlower.passes.kernel_fallback``; ``bitlower.ops`` says who counts when).
"""
from __future__ import annotations

import collections
import contextlib
from typing import Iterator

counters: collections.defaultdict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def reset() -> None:
    """Clear every counter group."""
    counters.clear()


@contextlib.contextmanager
def kept_on_success() -> Iterator[None]:
    """Counts made inside the block are undone when it raises.

    The backend counts a graph's sites before Inductor compiles it; when that compile raises,
    Dynamo drops the graph (``TensorifyScalarRestartAnalysis`` restarts the analysis and hands the
    backend the same sites again), so the counts of a dropped graph are taken back.
    """
    snapshot = {group: collections.Counter(c) for group, c in counters.items()}
    try:
        yield
    except BaseException:
        counters.clear()
        counters.update(snapshot)
        raise
