"""Name → model factory registry used by ``create_model`` and the CLI.

Names follow the published ones: ``vit_small_patch16_224``, ``vit_small_patch8`` (224px),
``deit_tiny_distilled_patch16_224``, ``deit_base_distilled_patch16_384``, ``dit_xl_2``,
``pixel_tiny``, ``seg_vit_small_patch8`` (segmentation). Keyword arguments to ``create_model`` override the config fields
(``num_classes``, ``img_size``, ``depth``, …).
"""

from __future__ import annotations

import difflib
import functools
from typing import Callable

from torch import nn

from . import dit, pixel, segmentation, vit

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

_VIT_SIZES = ("tiny", "small", "base", "large")
_VIT_PATCHES = (8, 14, 16, 32)
_VIT_IMAGE_SIZES = (224, 384)
_DIT_SIZES = ("s", "b", "l", "xl")
_DIT_PATCHES = (2, 4, 8)


def register_model(name: str, factory: ModelFactory, overwrite: bool = False) -> None:
    """Add a factory under ``name``.

    Args:
        name: registry key.
        factory: callable taking config overrides as keyword arguments.
        overwrite: replace an existing entry instead of raising.

    Raises:
        ValueError: if ``name`` is taken and ``overwrite`` is False.

    Example:
        >>> register_model("my_vit", functools.partial(vit.vit_tiny, depth=2))
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = factory


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from ``list_models()``.
        **overrides: config fields to change, e.g. ``num_classes=10, img_size=32``.

    Raises:
        KeyError: for an unknown name (the message lists the closest names).

    Example:
        >>> model = create_model("vit_tiny_patch16_224", num_classes=10, depth=2)
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5)
        raise KeyError(f"unknown model {name!r}; closest registered names: {close}")
    return _REGISTRY[name](**overrides)


def _with_defaults(factory: ModelFactory, **defaults) -> ModelFactory:
    @functools.wraps(factory)
    def build(**overrides) -> nn.Module:
        return factory(**{**defaults, **overrides})

    return build


def _register_vits() -> None:
    for size in _VIT_SIZES:
        plain = getattr(vit, f"vit_{size}")
        for patch in _VIT_PATCHES:
            register_model(f"vit_{size}_patch{patch}", _with_defaults(plain, patch_size=patch))
            for img in _VIT_IMAGE_SIZES:
                if img % patch:
                    continue  # e.g. 384 is not a multiple of patch 14
                build = _with_defaults(plain, patch_size=patch, img_size=img)
                register_model(f"vit_{size}_patch{patch}_{img}", build)
        if size == "large":
            continue  # DeiT has no large model.
        distilled = getattr(vit, f"deit_{size}_distilled")
        for img in _VIT_IMAGE_SIZES:
            register_model(f"deit_{size}_patch16_{img}", _with_defaults(plain, img_size=img))
            build = _with_defaults(distilled, img_size=img)
            register_model(f"deit_{size}_distilled_patch16_{img}", build)


def _register_dits() -> None:
    for size in _DIT_SIZES:
        for patch in _DIT_PATCHES:
            name = f"dit_{size}_{patch}"
            register_model(name, getattr(dit, name))


def _register_pixels() -> None:
    register_model("pixel_tiny", pixel.pixel_tiny)
    register_model("pixel_small", pixel.pixel_small)


def _register_segmentation() -> None:
    # seg_vit_<size>_patch<p>: ViT encoder + BinaryFormer decoder (value_reduction=4 for the seed's Dv = D/4).
    for size in _VIT_SIZES:
        for patch in (8, 16):
            build = functools.partial(segmentation.seg_vit, size, patch)
            register_model(f"seg_vit_{size}_patch{patch}", build)


_register_vits()
_register_dits()
_register_pixels()
_register_segmentation()
