"""Where a token sequence's patch grid ``(Gh, Gw, prefix_tokens)`` is read from a model.

The relative-position table is sized from the grid, so a handler needs it at binarize time.
Models say it in different places; these helpers try each in a fixed order.
"""
from __future__ import annotations

from torch import nn


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def grid_from_attributes(module: nn.Module) -> tuple[int, int, int] | None:
    """``module.grid_size`` and ``module.num_prefix_tokens`` (bitlower models set both on attention)."""
    grid = getattr(module, "grid_size", None)
    if grid is None:
        return None
    gh, gw = _pair(grid)
    return (gh, gw, int(getattr(module, "num_prefix_tokens", 0)))


def grid_from_patch_embed(root: nn.Module) -> tuple[int, int, int] | None:
    """``root.patch_embed.grid_size`` with ``root.num_prefix_tokens`` (timm and bitlower ViTs)."""
    embed = getattr(root, "patch_embed", None)
    grid = getattr(embed, "grid_size", None) if embed is not None else None
    if grid is None:
        return None
    gh, gw = _pair(grid)
    return (gh, gw, int(getattr(root, "num_prefix_tokens", 1)))


def grid_from_hf_config(root: nn.Module, prefix_tokens: int) -> tuple[int, int, int] | None:
    """``image_size // patch_size`` from a Hugging Face vision config on ``root``."""
    config = getattr(root, "config", None)
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if image is None or patch is None:
        return None
    (ih, iw), (ph, pw) = _pair(image), _pair(patch)
    return (ih // ph, iw // pw, prefix_tokens)


def first_grid(*candidates) -> tuple[int, int, int] | None:
    """The first candidate that is not None."""
    return next((c for c in candidates if c is not None), None)
