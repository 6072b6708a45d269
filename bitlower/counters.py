"""Named event counters: ``counters[group][name] += 1`` (read them in tests and reports)."""
from __future__ import annotations

import collections

counters: collections.defaultdict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def reset() -> None:
    """Clear every counter group."""
    counters.clear()
