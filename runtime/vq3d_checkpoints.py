"""Rebuild the 3D VQ diffusion models from the Trainer checkpoints of ``train_vqae3d``/``train_absorbing``.

The runs store their model configs in the checkpoint's ``config.extra`` (``vqae`` and, for the
transformer, ``transformer`` plus ``binarize``, the ``BinarizeConfig.to_dict()`` or None); the
weights are the EMA weights when the run kept them, else the model's.
"""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from bitlower.models.absorbing3d import AbsorbingConfig, AbsorbingTransformer3D
from bitlower.models.vqae3d import VQAE3DConfig, VQAutoEncoder3D

from .checkpoint import CheckpointError, read_checkpoint
from .config import BinarizeConfig
from .transform import binarize_


def _extra(state: dict, path, key: str, absent: str | None = None) -> dict:
    extra = state.get("config", {}).get("extra", {})
    if key not in extra:
        raise CheckpointError(f"{path}: not a checkpoint of this task (its configuration has no {key!r})")
    if absent is not None and absent in extra:
        raise CheckpointError(f"{path}: not a checkpoint of this task (it holds a {absent!r} model)")
    return extra


def _load_weights(model: nn.Module, state: dict, path) -> None:
    try:
        model.load_state_dict(_weights(state))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit the stored configuration: {first}") from err


def _weights(state: dict) -> dict:
    return state["ema"]["shadow"] if state.get("ema") else state["model"]


def load_vqae(path) -> tuple[VQAutoEncoder3D, dict]:
    """``(VQ-AE in eval mode, the run's extra config)`` from a ``vqae3d`` checkpoint.

    Raises:
        CheckpointError: a corrupt file or another task's checkpoint.
    """
    state = read_checkpoint(path)
    extra = _extra(state, path, "vqae", absent="transformer")
    model = VQAutoEncoder3D(VQAE3DConfig(**extra["vqae"]))
    _load_weights(model, state, path)
    return model.eval(), extra


def build_transformer(config: dict, binarize: dict | None) -> nn.Module:
    """An ``AbsorbingTransformer3D`` from its config dict, binarized as ``binarize`` says (no teacher)."""
    model = AbsorbingTransformer3D(AbsorbingConfig(**config))
    if binarize is not None:
        binarize_(model, replace(BinarizeConfig.from_dict(binarize), keep_teacher=False))
    return model


def load_absorbing(path) -> tuple[nn.Module, dict]:
    """``(transformer in eval mode, the run's extra config)`` from an ``absorbing`` checkpoint.

    Raises:
        CheckpointError: a corrupt file or another task's checkpoint.
    """
    state = read_checkpoint(path)
    extra = _extra(state, path, "transformer")
    model = build_transformer(extra["transformer"], extra.get("binarize"))
    _load_weights(model, state, path)
    return model.eval(), extra
