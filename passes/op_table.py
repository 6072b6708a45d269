"""The parts FX nodes play in attention, as a table from node targets to roles.

Dynamo hands the backend torch-level IR: the same operation reaches the graph as a
``call_function`` (``operator.matmul``, ``torch.matmul``, ``F.softmax``) or as a
``call_method`` (``x.matmul``, ``x.softmax``), with arguments positional or by keyword.
``role_of`` maps every spelling in ``OP_TABLE`` to one ``Role``: a role name plus the
arguments bound to their parameter names, so the matchers never look at spellings.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Node


@dataclass(frozen=True)
class OpSpec:
    """One row of the table: the spellings of an operation and how to bind its arguments.

    Attributes:
        role: what the operation does in attention terms.
        functions: ``call_function`` targets.
        methods: ``call_method`` names (``self`` binds to the first parameter).
        params: positional parameter names, in order.
        defaults: values of parameters the call may leave out.
        variadic: name under which positional arguments past ``params`` are collected.
    """

    role: str
    functions: tuple = ()
    methods: tuple[str, ...] = ()
    params: tuple[str, ...] = ("input",)
    defaults: dict[str, Any] = field(default_factory=dict)
    variadic: str | None = None


@dataclass(frozen=True)
class Role:
    """A node seen through ``OP_TABLE``: ``name`` is the role, ``args`` its bound arguments."""

    name: str
    node: Node
    args: dict[str, Any]


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

OP_TABLE: tuple[OpSpec, ...] = (
    OpSpec("matmul", (operator.matmul, torch.matmul, torch.bmm), ("matmul", "bmm", "__matmul__"), ("input", "other")),
    OpSpec("baddbmm", (torch.baddbmm,), ("baddbmm",), ("input", "batch1", "batch2"), {"beta": 1, "alpha": 1}),
    OpSpec("einsum", (torch.einsum,), (), ("equation",), variadic="operands"),
    OpSpec("transpose", (torch.transpose,), ("transpose",), ("input", "dim0", "dim1")),
    OpSpec("permute", (torch.permute,), ("permute",), ("input",), variadic="dims"),
    # layout changes a scalar factor commutes with
    OpSpec("layout", (torch.reshape, torch.flatten, torch.unflatten, torch.unsqueeze, torch.squeeze),
           ("reshape", "view", "flatten", "unflatten", "unsqueeze", "squeeze", "expand"), ("input",), variadic="rest"),
    OpSpec("mul", (operator.mul, torch.mul), ("mul", "__mul__", "__rmul__"), ("input", "other")),
    OpSpec("div", (operator.truediv, torch.div, torch.true_divide), ("div", "true_divide", "__truediv__"),
           ("input", "other"), {"rounding_mode": None}),
    OpSpec("add", (operator.add, torch.add), ("add", "__add__", "__radd__"), ("input", "other"), {"alpha": 1}),
    OpSpec("masked_fill", (torch.masked_fill,), ("masked_fill",), ("input", "mask", "value")),
    OpSpec("where", (torch.where,), (), ("condition", "input", "other")),
    # a softmax without ``dim`` binds dim None (F.softmax then picks an implicit, deprecated axis)
    OpSpec("softmax", (torch.softmax, torch.special.softmax), ("softmax",), ("input", "dim", "dtype"),
           {"dim": None, "dtype": None}),
    OpSpec("softmax", (F.softmax,), (), ("input", "dim", "_stacklevel", "dtype"), {"dim": None, "dtype": None}),
    OpSpec("dropout", (F.dropout,), (), ("input", "p", "training", "inplace"), {"p": 0.5, "training": True}),
    OpSpec("dropout", (torch.dropout,), (), ("input", "p", "train"), {}),
    # value-preserving conversions: the binary operator returns v's dtype and the rewrite
    # casts back to the dtype the replaced node had.
    OpSpec("cast", (), ("to", "float", "half", "bfloat16", "double", "type", "type_as", "contiguous"),
           ("input",), variadic="rest"),
    OpSpec("sdpa", (F.scaled_dot_product_attention,), (), _SDPA_PARAMS,
           {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}),
    # nn.MultiheadAttention and its inference fast paths: opaque calls, reported and skipped
    OpSpec("mha", (F.multi_head_attention_forward, torch._native_multi_head_attention,
                   torch._transformer_encoder_layer_fwd), (), (), variadic="rest"),
)

_BY_FUNCTION = {fn: spec for spec in OP_TABLE for fn in spec.functions}
_BY_METHOD = {name: spec for spec in OP_TABLE for name in spec.methods}


def _spec_of(node: Node) -> OpSpec | None:
    if node.op == "call_function":
        try:
            return _BY_FUNCTION.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _BY_METHOD.get(node.target)
    return None


def role_of(node: Any) -> Role | None:
    """The ``Role`` of an FX node, or None when ``OP_TABLE`` does not list its target.

    Example:
        >>> import torch.fx
        >>> g = torch.fx.symbolic_trace(lambda x: x.softmax(-1)).graph
        >>> [role_of(n).args["dim"] for n in g.nodes if role_of(n)]
        [-1]
    """
    if not isinstance(node, Node):
        return None
    spec = _spec_of(node)
    if spec is None:
        return None
    args = dict(spec.defaults)
    positional = list(node.args)
    args.update(zip(spec.params, positional))
    if spec.variadic is not None:
        rest = positional[len(spec.params):]
        if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
            rest = list(rest[0])
        args[spec.variadic] = tuple(rest)
    args.update(node.kwargs)
    return Role(spec.role, node, args)


def value_of(x: Any) -> Any:
    """The example value of a node (a fake tensor or a symbolic number), or ``x`` itself."""
    if isinstance(x, Node):
        return x.meta.get("example_value", x.meta.get("val"))
    return x


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a node (or value) holding a tensor (Dynamo or ``ShapeProp`` metadata)."""
    if isinstance(x, Node) and "example_value" not in x.meta and "val" not in x.meta:
        return "tensor_meta" in x.meta
    return isinstance(value_of(x), torch.Tensor)


def is_number(x: Any) -> bool:
    """A Python number fixed at trace time (not a node, not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def tensor_rank(x: Any) -> int:
    """Number of dims of a tensor node (Dynamo or ``ShapeProp`` metadata)."""
    value = value_of(x)
    if value is None and isinstance(x, Node) and "tensor_meta" in x.meta:
        return len(x.meta["tensor_meta"].shape)
    return value.dim()


def normalize_dim(dim: int, rank: int) -> int:
    """``dim`` as a non-negative index into a tensor of ``rank`` dims."""
    return dim + rank if dim < 0 else dim


def softmax_axis(role: Role) -> tuple[int, int] | None:
    """``(axis, rank)`` of a softmax role, the axis non-negative (no ``dim``: F.softmax's implicit,
    deprecated axis), or None when the input's rank or the axis is not known at trace time."""
    x = role.args["input"]
    if value_of(x) is None and not (isinstance(x, Node) and "tensor_meta" in x.meta):
        return None
    rank = tensor_rank(x)
    dim = role.args.get("dim")
    if dim is None:
        dim = F._get_softmax_dim("softmax", rank, 3)
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    return normalize_dim(dim, rank), rank


def swaps_last_two(role: Role) -> bool:
    """A transpose or permute that exchanges the last two dims and keeps the others."""
    rank = tensor_rank(role.args["input"])
    if role.name == "transpose":
        dims = {normalize_dim(role.args["dim0"], rank), normalize_dim(role.args["dim1"], rank)}
        return dims == {rank - 2, rank - 1}
    if role.name == "permute":
        dims = [normalize_dim(d, rank) for d in role.args["dims"]]
        return dims == list(range(rank - 2)) + [rank - 1, rank - 2]
    return False
