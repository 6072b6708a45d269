"""``binarize_`` (prepare) and ``convert_`` (deploy): the one verb that makes a model binary.

``binarize_(model, config)`` finds every attention module with a registered handler, attaches a
``BinaryAttentionCore`` holding the learned parts as ``module.binary`` and redirects the module's
attention math to it, in place. Everything is checked before the model is touched: a module
that cannot be binarized raises before any other is changed. Attention-like modules without a
handler are logged and listed in the report (or raise with ``strict=True``).
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from bitlower.validation import MAX_HEAD_DIM, MIN_HEAD_DIM

from . import attn_builtin, attn_diffusers, attn_hf, attn_timm  # noqa: F401  (register handlers)
from .config import BinarizeConfig
from .core import BinaryAttentionCore, Geometry
from .registry import AttentionHandler, find_handler, qualified_name

log = logging.getLogger(__name__)

# Class names and attributes by which a module is taken for an attention (for the report only).
ATTENTION_CLASS_NAME = re.compile(r"attention|attn", re.IGNORECASE)
ATTENTION_ATTRS = ("qkv", "to_q", "q_proj", "query", "in_proj_weight")


@dataclass
class BinarizeReport:
    """What ``binarize_`` did.

    Attributes:
        binarized: ``{module name: handler name}`` of every binarized module.
        unhandled: ``[(module name, qualified type, reason)]`` of attention-like modules left
            in full precision.
        skipped: names the ``filter_fn`` excluded.
        parameters_added: number of learned scalars added.
        teacher: frozen full-precision copy of the model (``keep_teacher``), or None.
    """

    binarized: dict[str, str] = field(default_factory=dict)
    unhandled: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    parameters_added: int = 0
    teacher: nn.Module | None = None


@dataclass(frozen=True)
class _Planned:
    name: str
    module: nn.Module
    handler: AttentionHandler
    geometry: Geometry


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen deep copy in eval mode: shares no parameter, buffer or submodule with ``model``."""
    teacher = copy.deepcopy(model)
    teacher.requires_grad_(False)
    return teacher.eval()


def _geometry(name: str, module: nn.Module, handler: AttentionHandler, root: nn.Module,
              config: BinarizeConfig) -> Geometry:
    geometry = handler.geometry(module, root)
    if config.grid is not None:
        geometry = Geometry(geometry.heads, geometry.head_dim, config.grid)
    if not MIN_HEAD_DIM <= geometry.head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dim {geometry.head_dim} is outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    if config.bias == "relpos" and geometry.grid is None:
        raise ValueError(f"{name} ({handler.name}): bias 'relpos' needs the patch grid, which this model does "
                         "not state; pass BinarizeConfig(grid=(Gh, Gw, prefix_tokens)) or choose bias 'head'")
    return geometry


def _plan(model: nn.Module, config: BinarizeConfig, filter_fn, report: BinarizeReport) -> list[_Planned]:
    plan = []
    for name, module in model.named_modules():
        handler = find_handler(module)
        if handler is None:
            continue
        if filter_fn is not None and not filter_fn(name, module):
            report.skipped.append(name)
            continue
        if isinstance(getattr(module, "binary", None), BinaryAttentionCore):  # filtered-out ones may be
            raise ValueError(f"{name or 'model'} is binarized already")
        reason = handler.unsupported(module)
        if reason is not None:
            report.unhandled.append((name, qualified_name(type(module)), reason))
            continue
        plan.append(_Planned(name, module, handler, _geometry(name, module, handler, model, config)))
    return plan


def looks_like_attention(module: nn.Module) -> bool:
    """Heuristic for the report: an attention-like class name or projection attribute."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
        return False
    return bool(ATTENTION_CLASS_NAME.search(type(module).__name__)) or any(
        hasattr(module, attr) for attr in ATTENTION_ATTRS)


def _unhandled(model: nn.Module, plan: list[_Planned], report: BinarizeReport) -> None:
    covered = [p.name for p in plan] + report.skipped + [u[0] for u in report.unhandled]

    def related(name: str) -> bool:
        return not name or any(name == c or name.startswith(c + ".") or c.startswith(name + ".") for c in covered)

    for name, module in model.named_modules():
        if looks_like_attention(module) and not related(name):
            report.unhandled.append((name, qualified_name(type(module)), "no registered handler"))


def binarize_(model: nn.Module, config: BinarizeConfig | None = None, *,
              filter_fn: Callable[[str, nn.Module], bool] | None = None) -> BinarizeReport:
    """Turn every handled attention module of ``model`` into binary attention, in place.

    The learned parts are real ``nn.Parameter``s when this returns: build the optimizer after.

    Args:
        model: a full-precision model.
        config: a ``BinarizeConfig`` (default: the BinaryAttention preset's settings).
        filter_fn: ``(name, module) -> bool``; modules it rejects stay full precision.

    Returns:
        a ``BinarizeReport`` (binarized and unhandled modules, the teacher).

    Raises:
        ValueError: a module cannot be binarized (no grid for ``relpos``, head dim out of range,
            binarized already), or ``strict`` and an attention-like module has no handler. The
            model is unchanged when this raises.

    Example:
        >>> from bitlower.models import vit_tiny
        >>> model = vit_tiny(img_size=32, patch_size=8, depth=2, num_classes=10)
        >>> report = binarize_(model, BinarizeConfig())
        >>> len(report.binarized)
        2
    """
    config = BinarizeConfig() if config is None else config
    report = BinarizeReport()
    plan = _plan(model, config, filter_fn, report)
    _unhandled(model, plan, report)
    if report.unhandled:
        listing = "; ".join(f"{n or 'model'} ({t}): {r}" for n, t, r in report.unhandled)
        if config.strict:
            raise ValueError(f"attention modules left in full precision: {listing}")
        log.warning("bitlower: attention modules left in full precision: %s", listing)
    if config.keep_teacher:
        report.teacher = make_teacher(model)
    for item in plan:
        ref = next(item.module.parameters(), None)
        core = BinaryAttentionCore(item.geometry, config)
        if ref is not None:
            core.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        core.binarize_config = config  # read by bitlower.save (bitlower.json)
        item.module.binary = core
        item.handler.install(item.module)
        report.binarized[item.name] = item.handler.name
        report.parameters_added += sum(p.numel() for p in core.parameters())
    log.info("bitlower: binarized %d attention modules, %d learned parameters added",
             len(plan), report.parameters_added)
    return report


def attention_cores(model: nn.Module) -> dict[str, BinaryAttentionCore]:
    """``{module name: core}`` of every binarized attention module in ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, BinaryAttentionCore)}


def convert_(model: nn.Module) -> nn.Module:
    """Prepare a trained binary model for deployment, in place; outputs stay identical (eval mode).

    Freezes every parameter, puts the model in eval mode and makes bilinear sign planes
    deterministic (the same ones eval mode uses). The result compiles with
    ``torch.compile(model, backend="bitlower", fullgraph=True)``.

    Raises:
        ValueError: ``model`` has no binarized attention.

    Example:
        >>> convert_(model)  # doctest: +SKIP
    """
    cores = attention_cores(model)
    if not cores:
        raise ValueError("convert_ needs a model prepared by binarize_; none of its modules is binarized")
    for core in cores.values():
        core.convert()
    model.requires_grad_(False)
    return model.eval()
