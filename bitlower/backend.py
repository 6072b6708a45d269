"""``torch.compile(model, backend="bitlower")``: binarize attention, compile the rest with Inductor.

The entry point group ``torch_dynamo_backends`` names ``bitlower_backend`` (pyproject.toml), so
``backend="bitlower"`` works without importing bitlower. The function stays undecorated:
registering it with ``register_backend`` as well makes the lookup fail ("duplicate name"); a checkout
without the entry point gets the name from ``bitlower.registration`` on ``import bitlower``.

Flow: the Dynamo graph (torch-level IR) -> ``bitlower.passes.rewrite_attention`` ->
``bitlower.passes.kernel_fallback.count_kernel_fallbacks`` ->
``bitlower.passes.softmax_axis_guard.guard_softmax_axes`` (softmaxes over a non-last axis, which
Inductor's attention pattern would silently turn into a softmax over the keys) ->
``bitlower.passes.saturate_fills.saturate_where_fills`` (``where`` fills beyond the dtype's range, which
Inductor's constant folding refuses on CUDA, written as eager's rounding of them) ->
``torch._inductor.compile_fx.compile_fx``, the function ``backend="inductor"`` calls. A graph
without accepted attention sites, such softmaxes or such fills reaches ``compile_fx`` unchanged. No pass is
handed to Inductor: the rewrite is done before ``compile_fx``, so Inductor's caches key the rewritten
graph itself (the operator call and its static arguments are part of it, ``source_hash`` included).

Kernel fallbacks (CUDA calls the fused kernels do not cover) are counted here, on every compile,
because a cache hit in ``compile_fx`` skips the trace of the operator's body where the choice
is made; the pass marks each call ``counted`` (its ``kernel_options``) so a cold compile's trace
does not count them twice (see ``bitlower.ops``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch._inductor import config as inductor_config
from torch._inductor import list_mode_options
from torch._inductor.compile_fx import compile_fx

from bitlower.backend_config import BackendConfig
from bitlower.counters import kept_on_success
from bitlower.passes.kernel_fallback import count_kernel_fallbacks
from bitlower.passes.rewrite_attention import rewrite_attention
from bitlower.passes.saturate_fills import saturate_where_fills
from bitlower.passes.softmax_axis_guard import guard_softmax_axes

log = logging.getLogger(__name__)


def split_options(options: Mapping[str, Any] | None) -> tuple[BackendConfig, dict[str, Any]]:
    """Split ``torch.compile`` options into a ``BackendConfig`` and Inductor config patches.

    Keys named like ``BackendConfig`` fields configure bitlower; keys of
    ``torch._inductor.config`` (``"max_autotune"``, ``"triton.cudagraphs"``) go to Inductor.

    Raises:
        ValueError: a key that is neither, or an invalid bitlower value.

    Example:
        >>> cfg, patches = split_options({"min_seq_len": 64, "max_autotune": False})
        >>> cfg.min_seq_len, patches
        (64, {'max_autotune': False})
    """
    options = dict(options or {})
    ours = {k: v for k, v in options.items() if k in BackendConfig.option_names()}
    rest = {k: v for k, v in options.items() if k not in ours}
    known = inductor_config.get_config_copy()
    unknown = sorted(k for k in rest if k not in known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for backend 'bitlower': options are bitlower's "
            f"{list(BackendConfig.option_names())} or keys of torch._inductor.config")
    return BackendConfig.from_options(ours), rest


def bitlower_backend(gm: torch.fx.GraphModule, example_inputs, *, mode: str | None = None,
                     options: Mapping[str, Any] | None = None):
    """Dynamo backend: rewrite attention to binary attention, then compile with Inductor.

    Args:
        gm: the Dynamo graph.
        example_inputs: its example inputs (forwarded to ``compile_fx``).
        mode: an Inductor mode (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``,
            ``"max-autotune-no-cudagraphs"``), mapped through ``torch._inductor.list_mode_options``.
        options: bitlower options (``BackendConfig`` fields) and Inductor config keys.

    Returns:
        the compiled callable from ``compile_fx``. Counters: those of ``rewrite_attention``, and
        ``fallback`` by reason for each operator call that will run the reference on CUDA; both
        are taken back when ``compile_fx`` raises (Dynamo then drops the graph, e.g. to restart
        its analysis with a Python float specialized), so each kept graph counts once.

    Raises:
        ValueError: unknown options or mode, invalid option values.

    Example:
        >>> import torch
        >>> f = torch.compile(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        ...                   backend="bitlower", options={"grad_mode": "ste"})
        >>> f(*(torch.randn(1, 2, 16, 8) for _ in range(3))).shape
        torch.Size([1, 2, 16, 8])
    """
    config, patches = split_options(options)
    if mode is not None:
        modes = torch._inductor.list_mode_options()
        if mode not in modes:
            raise ValueError(f"unknown mode {mode!r} for backend 'bitlower'; modes are {sorted(modes)}")
        patches = {**list_mode_options(mode), **patches}
    with kept_on_success():  # a compile that raises (a Dynamo restart) drops the graph and its counts
        gm = saturate_where_fills(guard_softmax_axes(count_kernel_fallbacks(rewrite_attention(gm, config))))
        return compile_fx(gm, example_inputs, config_patches=patches)


def bitlower_eager_backend(gm: torch.fx.GraphModule, example_inputs, *, mode: str | None = None,
                           options: Mapping[str, Any] | None = None):
    """The same rewrite, then AOTAutograd without Inductor (``aot_eager``): for debugging and fast tests.

    The operator's forward and registered backward run as traced by AOTAutograd; the rest of
    the graph runs eagerly. ``mode`` is accepted and ignored (it only concerns Inductor). Kernel
    fallbacks are counted as in ``bitlower_backend``.

    Raises:
        ValueError: unknown or invalid bitlower options (Inductor keys are accepted and ignored).
    """
    from torch._dynamo.backends.debugging import aot_eager

    config, _ = split_options(options)
    with kept_on_success():
        gm = count_kernel_fallbacks(rewrite_attention(gm, config))
        return aot_eager(gm, example_inputs)
