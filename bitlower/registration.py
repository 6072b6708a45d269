"""``backend="bitlower"`` for a checkout on ``PYTHONPATH``, where no entry point is installed.

An installed bitlower names its backend through the ``torch_dynamo_backends`` entry point
(pyproject.toml); registering the name again would make Dynamo's lookup fail ("duplicate name"). A
checkout imported from its folder has no entry point: ``import bitlower`` then registers a forwarder
that imports ``bitlower.backend`` on the first compile (Inductor's import stays lazy).
"""
from __future__ import annotations

from importlib.metadata import entry_points

BACKEND_NAME = "bitlower"
ENTRY_POINT_GROUP = "torch_dynamo_backends"


def bitlower(graph_module, example_inputs, **kwargs):
    """Forwards to ``bitlower.backend.bitlower_backend`` (see the module docstring)."""
    from bitlower.backend import bitlower_backend

    return bitlower_backend(graph_module, example_inputs, **kwargs)


def register_without_entry_point() -> bool:
    """Register ``bitlower`` with Dynamo unless an entry point or an earlier call already names it.

    Returns:
        True when this call registered the name.
    """
    from torch._dynamo.backends import registry

    if BACKEND_NAME in entry_points(group=ENTRY_POINT_GROUP).names or BACKEND_NAME in registry._COMPILER_FNS:
        return False
    registry.register_backend(compiler_fn=bitlower, name=BACKEND_NAME)
    return True
