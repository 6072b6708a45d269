"""Count, at compile time, every operator call that will run the reference instead of the kernels.

On CUDA the operator runs the fused kernels where ``bitlower.codegen``'s support checks accept
the call and the exact reference otherwise. Under Inductor that choice is made while AOTAutograd
traces the operator's body, which an FX-graph or AOTAutograd cache hit skips; a fallback counted
there would be counted on a cold compile and never on a warm one. So the bitlower backend runs
this pass on every graph Dynamo hands it, before Inductor and its caches are consulted: each call
of ``bitlower::binary_attention_fwd`` (rewritten sites and calls already in the graph, such as a
binarized model's ``bitlower.binary_attention``) is checked on its fake tensors with the same
function the operator uses (``bitlower.ops.fallback_reason``), and each fallback is counted in
``bitlower.counters["fallback"][reason]`` and logged, once per call site and compiled graph: the
forward, and the backward too when the call saves bits for one (it is differentiated).

Each call it has counted gets ``counted=True`` in its ``kernel_options`` argument
(``codegen.plan.KernelOptions``), so the operator bodies AOTAutograd then traces on fake tensors do not
count the same fallbacks again; the argument is part of the graph, so Inductor's caches key it.

Sizes are taken at the values Dynamo traced (the hints of symbolic sizes): the decision adds no
guards, and it is the one the operator's trace makes at those sizes.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import GraphModule, Node

from bitlower import ops
from bitlower.counters import counters
from bitlower.passes.op_table import value_of
from bitlower.passes.site import module_path
from bitlower.spec import FWD_PARAMS, FWD_TENSORS, bind_fwd_args, spec_of_fwd_args

log = logging.getLogger(__name__)

OPERATOR = ops.FWD_OPERATOR
REASONS_META_KEY = "bitlower_kernel_fallback"


def _hint(d) -> int:
    """A concrete size: the traced value of a symbolic one (no guard is added)."""
    return d if isinstance(d, int) else int(d.node.hint)


def _concrete(x, mode: FakeTensorMode):
    """A fake tensor with ``x``'s device, dtype, and sizes and strides at their traced values."""
    if not isinstance(x, torch.Tensor):
        return x
    with mode:
        return torch.empty_strided([_hint(d) for d in x.shape], [_hint(s) for s in x.stride()],
                                   dtype=x.dtype, device=x.device)


def _bound(node: Node) -> dict:
    """The call's arguments by parameter name, as example values (fake tensors, numbers, lists)."""
    args = bind_fwd_args(node.args, node.kwargs)
    return {name: value_of(x) if isinstance(x, Node) else x for name, x in args.items()}


def call_fallback_reasons(node: Node) -> list[str]:
    """Why one ``binary_attention_fwd`` call will run the reference: forward first, then backward.

    Empty when the kernels cover the call, when it runs on CPU (the reference is the CPU path,
    not a fallback), or when the graph carries no example values (``symbolic_trace``). Asked once per
    call node: the answer is kept in ``node.meta[REASONS_META_KEY]``, so the rewrite's site report and
    ``count_kernel_fallbacks`` read the same plan query.

    Example:
        >>> import torch.fx
        >>> g = torch.fx.Graph()
        >>> q = g.placeholder("q")
        >>> call = g.call_function(OPERATOR, (q, q, q, None, None, None, 0.25, "mean_abs", "none", [],
        ...                                   "ste", "none", 1.0, False))
        >>> with FakeTensorMode():
        ...     q.meta["example_value"] = torch.empty(1, 2, 16, 8, device="cuda")
        >>> call_fallback_reasons(call)
        ['codegen kernels need D in [16, 256], got 8']
    """
    if REASONS_META_KEY not in node.meta:
        node.meta[REASONS_META_KEY] = tuple(_reasons(node))
    return list(node.meta[REASONS_META_KEY])


def _reasons(node: Node) -> list[str]:
    """``call_fallback_reasons`` computed: ``bitlower.ops.fallback_reason`` (the plan) for the forward and backward."""
    args = _bound(node)
    outputs = value_of(node)
    if not isinstance(args["q"], torch.Tensor):
        return []
    mode = FakeTensorMode()
    q, k, v, a, b, bias = (_concrete(args[name], mode) for name in FWD_TENSORS)
    spec = spec_of_fwd_args(args)
    options = args["kernel_options"]
    reasons = [ops.fallback_reason("unsupported_reason", (q, k, v, a, b, bias), spec, options)]
    if spec.save_bits and outputs is not None:  # differentiated: the backward operator runs too
        out, *saved = (_concrete(x, mode) for x in outputs)  # (out, lse, qbits, kbits, qclip, kclip, a, b, row_state)
        grad_out = out  # the gradient of ``out`` has its shape, dtype and device
        reasons.append(ops.fallback_reason("unsupported_backward_reason", (grad_out, v, bias, *saved), spec, options,
                                           head_dim=int(q.shape[-1])))
    return [r for r in reasons if r is not None]


def count_kernel_fallbacks(gm: GraphModule) -> GraphModule:
    """Count and log the fallback of every operator call in ``gm`` and its subgraphs, and mark each call counted.

    Args:
        gm: a Dynamo-level graph module, after ``rewrite_attention``.

    Returns:
        ``gm`` itself, each operator call's ``kernel_options`` with ``counted=True``. Counter:
        ``fallback`` by reason, one per call site (forward, and backward when differentiated) each
        time the graph is compiled.
    """
    for module in gm.modules():
        if not isinstance(module, GraphModule):
            continue
        nodes = module.graph.find_nodes(op="call_function", target=OPERATOR)
        for node in nodes:
            for reason in call_fallback_reasons(node):
                counters["fallback"][reason] += 1
                log.info("bitlower: operator call at %r will run the reference on CUDA: %s",
                         module_path(node), reason)
            _mark_counted(node)
        if nodes:
            module.recompile()
    return gm


def _mark_counted(node: Node) -> None:
    """Set ``counted=True`` in the call's ``kernel_options`` (positional or keyword, as the call has it)."""
    from bitlower.codegen.plan import KernelOptions

    index = FWD_PARAMS.index("kernel_options")
    current = node.args[index] if len(node.args) > index else node.kwargs.get("kernel_options", "")
    marked = replace(KernelOptions.decode(current), counted=True).encode()
    if len(node.args) > index:
        node.update_arg(index, marked)
    else:
        node.update_kwarg("kernel_options", marked)
