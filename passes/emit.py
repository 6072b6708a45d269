"""Insert nodes into a Dynamo graph with valid metadata.

Every inserted node gets ``example_value`` (computed by running its target on the fake
values of its inputs, inside the graph's fake mode) and the ``nn_module_stack`` and
``stack_trace`` of the node it stands in for, so later passes, ``explain`` and Inductor's
provenance see the same module paths as before the rewrite.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx import Graph, Node
from torch.fx.node import map_arg

from bitlower.passes.op_table import value_of

INHERITED_META = ("nn_module_stack", "stack_trace", "source_fn_stack")


def _example_value(op: str, target: Any, args: tuple, kwargs: dict):
    values_args = map_arg(args, value_of)
    values_kwargs = map_arg(kwargs, value_of)
    leaves = torch.utils._pytree.tree_leaves((values_args, values_kwargs))
    modes = {x.fake_mode for x in leaves if isinstance(x, FakeTensor)}
    symbolic = any(isinstance(x, (torch.SymInt, torch.SymFloat)) for x in leaves)
    if len(modes) > 1 or not (modes or symbolic):
        return None  # graphs without fake values (symbolic_trace) stay without
    with modes.pop() if modes else contextlib.nullcontext():  # SymInt / SymFloat arithmetic needs none
        if op == "call_method":
            return getattr(values_args[0], target)(*values_args[1:], **values_kwargs)
        return target(*values_args, **values_kwargs)


class Emitter:
    """Creates nodes before ``anchor`` carrying ``anchor``'s module metadata.

    Example:
        >>> import torch.fx
        >>> gm = torch.fx.symbolic_trace(lambda x: x + 1)
        >>> add = [n for n in gm.graph.nodes if n.op == "call_function"][0]
        >>> Emitter(gm.graph, add).call(torch.neg, add.args[0]).format_node()
        '%neg : [num_users=0] = call_function[target=torch.neg](args = (%x,), kwargs = {})'
    """

    def __init__(self, graph: Graph, anchor: Node):
        self.graph, self.anchor = graph, anchor

    def _create(self, op: str, target: Any, args: tuple, kwargs: dict) -> Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.create_node(op, target, args, kwargs)
        for key in INHERITED_META:
            if key in self.anchor.meta:
                node.meta[key] = self.anchor.meta[key]
        value = _example_value(op, target, args, kwargs)
        if value is not None:
            node.meta["example_value"] = value
        return node

    def call(self, target: Callable, *args, **kwargs) -> Node:
        """A ``call_function`` node."""
        return self._create("call_function", target, args, kwargs)

    def method(self, name: str, *args, **kwargs) -> Node:
        """A ``call_method`` node (``args[0]`` is ``self``)."""
        return self._create("call_method", name, args, kwargs)

    def copy(self, node: Node, replace: dict) -> Node:
        """A node like ``node`` reading ``replace[x]`` in place of each input ``x`` it lists."""
        args, kwargs = map_arg((node.args, node.kwargs), lambda x: replace.get(x, x))
        return self._create(node.op, node.target, args, kwargs)
