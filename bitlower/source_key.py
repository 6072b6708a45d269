"""bitlower's source in Inductor's cache keys: a warm cache never replays code of another version.

Inductor's FX graph cache keys a graph by its nodes, inputs and Inductor config, not by the Python that
an operator call runs when traced (the ``triton_op`` bodies, the fake implementations, the kernels).
After an upgrade a warm cache would replay wrapper code built for the old outputs (session 10: a
changed output layout met a stale cached stride check). ``SourceKey`` is a post-grad pass that changes
nothing; its ``uuid`` (part of the cache key) is ``source_hash.SOURCE_HASH``, which the operator calls
also carry (for ``torch.compile`` with plain Inductor). A pass the caller set is kept: it runs first and
its uuid joins ours.
"""
from __future__ import annotations

from torch._inductor.custom_graph_pass import CustomGraphPass

from bitlower.source_hash import SOURCE_HASH


class SourceKey(CustomGraphPass):
    """A no-op post-grad pass (or the caller's, wrapped) whose uuid carries ``SOURCE_HASH``."""

    def __init__(self, inner: CustomGraphPass | None = None):
        self.inner = inner

    def __call__(self, graph) -> None:
        if self.inner is not None:
            self.inner(graph)

    def uuid(self):
        if self.inner is None:
            return SOURCE_HASH
        theirs = self.inner.uuid()
        return None if theirs is None else (SOURCE_HASH, theirs)  # None: Inductor bypasses the cache, as for theirs


def with_source_key(patches: dict) -> dict:
    """Inductor config patches with ``post_grad_custom_post_pass`` wrapped in ``SourceKey``."""
    from torch._inductor import config

    inner = patches.get("post_grad_custom_post_pass", config.post_grad_custom_post_pass)
    return {**patches, "post_grad_custom_post_pass": SourceKey(inner)}
