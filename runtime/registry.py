"""Open registry from attention module types to the handlers that binarize them.

A type is keyed by its qualified name (``module.QualName``), so handlers for libraries that are
not installed (timm, transformers, diffusers) register without importing them. Lookup walks the
module's MRO, so subclasses of a registered type are handled too. Users add their own types with
``register_attention``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .core import BinaryAttentionCore, Geometry


def _always(module: nn.Module) -> bool:
    return True


def _nothing_unsupported(module: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class AttentionHandler:
    """How one attention type is binarized.

    Attributes:
        name: short name used in reports.
        geometry: ``(module, root_model) -> Geometry``; the grid may be None when unknown.
        install: ``(module) -> None``; redirects the module's attention math to its
            ``module.binary`` core (set before ``install`` is called).
        applies: ``(module) -> bool``; False lets the dispatcher pass over a module of a
            registered type that is not itself an attention (e.g. a wrapper of one).
        unsupported: ``(module) -> str | None``; why this instance cannot be binarized.
    """

    name: str
    geometry: Callable[[nn.Module, nn.Module], Geometry]
    install: Callable[[nn.Module], None]
    applies: Callable[[nn.Module], bool] = _always
    unsupported: Callable[[nn.Module], str | None] = _nothing_unsupported


_HANDLERS: dict[str, AttentionHandler] = {}
_SWAPPED: dict[tuple[type, type], type] = {}


def qualified_name(cls: type) -> str:
    """``"package.module.QualName"`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_attention(target: type | str, handler: AttentionHandler, overwrite: bool = False) -> None:
    """Map an attention module type to its handler.

    Args:
        target: the class, or its qualified name (``"timm.layers.attention.Attention"``).
        handler: the ``AttentionHandler``.
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: ``target`` is registered already and ``overwrite`` is False.
        TypeError: ``handler`` is not an ``AttentionHandler``.

    Example:
        >>> register_attention("mylib.MyAttention", AttentionHandler("mine", geom, install))  # doctest: +SKIP
    """
    if not isinstance(handler, AttentionHandler):
        raise TypeError(f"handler must be an AttentionHandler, got {type(handler).__name__}")
    key = target if isinstance(target, str) else qualified_name(target)
    if key in _HANDLERS and not overwrite:
        raise ValueError(f"attention type {key!r} is already registered (handler {_HANDLERS[key].name!r})")
    _HANDLERS[key] = handler


def unregister_attention(target: type | str) -> None:
    """Remove a registration (no error when absent)."""
    _HANDLERS.pop(target if isinstance(target, str) else qualified_name(target), None)


def registered_types() -> list[str]:
    """Qualified names of every registered attention type, sorted."""
    return sorted(_HANDLERS)


def find_handler(module: nn.Module) -> AttentionHandler | None:
    """The handler of the most derived registered class in ``module``'s MRO that applies, or None."""
    for cls in type(module).__mro__:
        handler = _HANDLERS.get(qualified_name(cls))
        if handler is not None:
            return handler if handler.applies(module) else None
    return None


def swap_class(module: nn.Module, mixin: type) -> None:
    """Give ``module`` the class ``(mixin, type(module))``: the mixin's methods override.

    The generated class is cached per (mixin, class) and named ``Binary<Class>``. A module
    already carrying the mixin is left as it is.
    """
    cls = type(module)
    if issubclass(cls, mixin):
        return
    key = (mixin, cls)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(f"Binary{cls.__name__}", (mixin, cls), {"__module__": mixin.__module__})
    module.__class__ = _SWAPPED[key]


def core_of(module: nn.Module) -> BinaryAttentionCore:
    """The ``binary`` core attached to a binarized module."""
    return module.binary
