"""Named event counters: ``counters[group][name] += 1`` (read them in tests and reports).

Groups bitlower counts in:
- ``sites_found`` / ``sites_rewritten`` (by pattern), ``sites_skipped`` (by reason): each graph
  the rewrite pass sees (``bitlower.passes.rewrite_attention``).
- ``fallback`` (by reason): operator calls on CUDA that run the exact reference because the fused
  kernels do not cover them. An eager call counts each time it runs; under
  ``torch.compile(backend="bitlower")`` each operator call site counts once per compiled graph
  (forward, plus backward when differentiated), whether or not Inductor's caches hit
  (``bitlower.passes.kernel_fallback``; ``bitlower.ops`` says who counts when).
"""
from __future__ import annotations

import collections

counters: collections.defaultdict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def reset() -> None:
    """Clear every counter group."""
    counters.clear()
