"""Loading a pre-trained (DINO) ViT into a segmentation encoder, and the seed's re-initialisation.

BinaryFormer (seed 001, A.1) modifies the DINO ViT-S/8 thus: keep the patch embedding and the
MLPs of blocks 0-3, re-initialise the weights of all attention blocks (about 23% of the
transformer's weights) and the MLPs of blocks 4-11. The authors' script also resets the two
LayerNorms of those later blocks; ``ReinitConfig`` does the same.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .layers import init_linear_trunc_normal, resample_pos_embed
from .segmentation import SegmentationViT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReinitConfig:
    """Which encoder parts get a fresh initialisation after loading.

    Args:
        attention: re-initialise every block's ``attn`` (qkv and proj; trunc-normal std 0.02,
            zero bias, the ViT/DeiT initialisation).
        mlp_from: re-initialise ``mlp``, ``norm1`` and ``norm2`` of blocks ``mlp_from..depth-1``;
            None keeps them all.

    Raises:
        ValueError: a negative ``mlp_from``.
    """

    attention: bool = True
    mlp_from: int | None = 4

    def __post_init__(self) -> None:
        if self.mlp_from is not None and self.mlp_from < 0:
            raise ValueError(f"mlp_from must be >= 0 or None, got {self.mlp_from}")


SEED_REINIT = ReinitConfig(attention=True, mlp_from=4)  # seed A.1, steps 3-5
NO_REINIT = ReinitConfig(attention=False, mlp_from=None)


def reinitialise_(model: SegmentationViT, config: ReinitConfig = SEED_REINIT) -> list[str]:
    """Give the chosen encoder parts a fresh initialisation, in place.

    Returns:
        the names (under ``encoder.``) of the re-initialised submodules.
    """
    names = []
    for index, block in enumerate(model.encoder.blocks):
        if config.attention:
            block.attn.apply(init_linear_trunc_normal)
            names.append(f"blocks.{index}.attn")
        if config.mlp_from is not None and index >= config.mlp_from:
            block.mlp.apply(init_linear_trunc_normal)
            block.norm1.reset_parameters()
            block.norm2.reset_parameters()
            names += [f"blocks.{index}.mlp", f"blocks.{index}.norm1", f"blocks.{index}.norm2"]
    return names


def _is_attention_key(key: str) -> bool:
    return ".attn." in key


def _fit_pos_embed(table: torch.Tensor, target: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    if table.shape == target.shape:
        return table
    side = math.isqrt(table.shape[1] - prefix)
    if side * side != table.shape[1] - prefix or table.shape[-1] != target.shape[-1]:
        raise ValueError(f"pos_embed {tuple(table.shape)} is no square grid of width {target.shape[-1]} "
                         f"after {prefix} prefix tokens")
    log.info("resampling pos_embed from a %dx%d grid to %s", side, side, grid)
    return resample_pos_embed(table, (side, side), grid, prefix)


HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
          "embeddings.patch_embeddings.projection": "patch_embed.proj", "layernorm": "norm"}
# Per-block names: checkpoint files of transformers 4 (``encoder.layer.i.attention.attention.query``) and
# the module names of transformers 5 (``layers.i.attention.q_proj``); "q", "k", "v" are joined into qkv.
HF_BLOCK = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
            "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
            "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
            "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
            "layernorm_before": "norm1", "layernorm_after": "norm2"}
HF_BLOCK_KEY = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def from_hf_vit(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``ViTModel`` state dict (e.g. ``facebook/dino-vits8``) to timm's names.

    Accepts transformers 4 checkpoint names and transformers 5 module names, bare or under a
    classifier's ``vit.``; ``query``/``key``/``value`` are concatenated into ``qkv`` (rows q, k,
    v, as timm stores them); the pooler and any classifier are dropped.

    Raises:
        ValueError: a key that is no ViTModel name.
    """
    out, qkv = {}, {}
    for key, value in state_dict.items():
        name = key[len("vit."):] if key.startswith("vit.") else key
        if name.startswith(("pooler.", "classifier.")):
            continue
        stem, _, leaf = name.rpartition(".")
        block = HF_BLOCK_KEY.match(name)
        if block and block.group(2) in HF_BLOCK:
            index, part, leaf = block.groups()
            target = HF_BLOCK[part]
            if target in ("q", "k", "v"):
                qkv.setdefault((index, leaf), {})[target] = value
            else:
                out[f"blocks.{index}.{target}.{leaf}"] = value
        elif name in HF_TOP or stem in HF_TOP:
            out[HF_TOP[name] if name in HF_TOP else f"{HF_TOP[stem]}.{leaf}"] = value
        else:
            raise ValueError(f"{key!r} is no Hugging Face ViTModel parameter name")
    for (index, leaf), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3C, ...)
    return out


def load_encoder(model: SegmentationViT, state_dict: dict[str, torch.Tensor],
                 reinit: ReinitConfig = SEED_REINIT) -> list[str]:
    """Load a timm-named (or transformers-named) ViT state dict, e.g. DINO ViT-S/8, into ``model.encoder``,
    then re-initialise.

    Key sets must match exactly (``head.*`` keys of a classifier are dropped). ``pos_embed`` is
    resampled bicubically when the checkpoint's grid differs. Attention weights whose shapes
    differ (``value_reduction`` > 1) are skipped, which is allowed only when ``reinit.attention``
    re-initialises them anyway.

    Args:
        model: the ``SegmentationViT``.
        state_dict: the ViT's state dict, timm names.
        reinit: what to re-initialise afterwards (``SEED_REINIT``, ``NO_REINIT``, ...).

    Returns:
        the names of the re-initialised submodules.

    Raises:
        ValueError: missing or unexpected keys, or a shape mismatch that is not excused.

    Example:
        >>> load_encoder(model, timm_model.state_dict())  # doctest: +SKIP
    """
    encoder = model.encoder
    own = encoder.state_dict()
    if any(k.startswith(("embeddings.", "vit.embeddings.")) for k in state_dict):
        state_dict = from_hf_vit(state_dict)  # transformers' naming (the seed loads facebook/dino-vits8 so)
    given = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    missing, unexpected = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    if missing or unexpected:
        raise ValueError(f"encoder state dict mismatch: missing {missing[:6]}, unexpected {unexpected[:6]}")
    given["pos_embed"] = _fit_pos_embed(given["pos_embed"], own["pos_embed"], encoder.num_prefix_tokens,
                                        encoder.grid_size)
    for key, value in given.items():
        if value.shape == own[key].shape:
            continue
        if not (_is_attention_key(key) and reinit.attention):
            raise ValueError(f"encoder {key}: checkpoint shape {tuple(value.shape)}, model {tuple(own[key].shape)}")
        given[key] = own[key]  # re-initialised below; the narrowed value path has new shapes
    encoder.load_state_dict(given, strict=True)
    return reinitialise_(model, reinit)


def count_parameters(module: nn.Module) -> int:
    """Number of scalars in ``module``'s parameters."""
    return sum(p.numel() for p in module.parameters())
