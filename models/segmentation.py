"""Semantic segmentation: a ViT encoder of ``models/`` with BinaryFormer's convolutional decoder.

BinaryFormer (seed 001, §3.1 and Appendix A.1) fine-tunes a DINO ViT-S/8 (12 blocks, C 384,
6 heads) at 320x320 (N = 1600 tokens) with the decoder of ``seg_decoder.py``, value channels
reduced 4x (Dv = 64 -> 16) and re-initialised attention blocks and later MLPs (``seg_pretrained``).

The encoder is a ``VisionTransformer`` without a head, under ``encoder.``, so its parameter
names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.attn.qkv``, …,
``norm``): a timm DINO ViT-S/8 state dict loads into ``model.encoder`` with ``strict=True``
(with ``value_reduction=1``; the 4x-reduced value path changes ``qkv`` and ``proj`` shapes, and
``seg_pretrained.load_encoder`` loads the rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import Attention, set_attention_metadata
from .layers import init_linear_trunc_normal
from .seg_decoder import SegmentationDecoder
from .vit import ViTConfig, VisionTransformer, vit_config

DECODER_WIDTH = 1024  # seed A.1: "the input channel dimension of 384 is expanded to 1024"


@dataclass(frozen=True)
class SegmentationConfig:
    """Shape of a ``SegmentationViT``.

    Args:
        encoder: the ``ViTConfig`` of the encoder (its ``num_classes`` must be 0).
        num_classes: K, per-pixel classes (background included).
        decoder_width: decoder channels after the stem, halved per resolution.
        value_reduction: r, value channels per head ``Dv = D / r`` (1: standard, 4: the seed).

    Raises:
        ValueError: an encoder with a head, a patch size that is not a power of two, K < 1, or
            an r that does not divide the head dim.
    """

    encoder: ViTConfig = field(default_factory=lambda: vit_config("small", patch_size=8, num_classes=0))
    num_classes: int = 2
    decoder_width: int = DECODER_WIDTH
    value_reduction: int = 1

    def __post_init__(self) -> None:
        enc = self.encoder
        if enc.num_classes != 0:
            raise ValueError(f"the encoder must have no head (num_classes=0), got {enc.num_classes}")
        patch = enc.patch_size if isinstance(enc.patch_size, int) else enc.patch_size[0]
        if enc.patch_size not in (patch, (patch, patch)) or patch < 2 or patch & (patch - 1):
            raise ValueError(f"patch_size must be one power of two >= 2 (the decoder doubles), got {enc.patch_size}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        head_dim = enc.embed_dim // enc.num_heads
        if self.value_reduction < 1 or head_dim % self.value_reduction:
            raise ValueError(f"value_reduction={self.value_reduction} must divide the head dim {head_dim}")

    @property
    def img_size(self):
        """Input side(s), as the encoder's config has it."""
        return self.encoder.img_size

    @property
    def in_chans(self) -> int:
        return self.encoder.in_chans

    @property
    def patch(self) -> int:
        return self.encoder.patch_size if isinstance(self.encoder.patch_size, int) else self.encoder.patch_size[0]

    @property
    def value_dim(self) -> int:
        """Total value width ``H * Dv``."""
        return self.encoder.embed_dim // self.value_reduction


class SegmentationViT(nn.Module):
    """ViT encoder + convolutional decoder: images (B, C_in, H, W) -> logits (B, K, H, W).

    Args:
        config: a ``SegmentationConfig``.

    Example:
        >>> enc = vit_config("tiny", img_size=32, patch_size=8, num_classes=0, depth=1, embed_dim=32, num_heads=2)
        >>> model = SegmentationViT(SegmentationConfig(enc, num_classes=3, decoder_width=64))
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, config: SegmentationConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VisionTransformer(config.encoder)
        if config.value_reduction != 1:
            _narrow_values(self.encoder, config.value_dim)
        self.decoder = SegmentationDecoder(
            config.encoder.embed_dim, config.num_classes, config.decoder_width, int(math.log2(config.patch))
        )

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.grid_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, H, W) -> patch features (B, C, Gh, Gw), prefix tokens dropped."""
        tokens = self.encoder.forward_features(x)  # (B, P + Gh*Gw, C)
        tokens = tokens[:, self.encoder.num_prefix_tokens:]  # (B, Gh*Gw, C)
        gh, gw = self.grid_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)  # (B, C, Gh, Gw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(x))  # (B, K, H, W)


def _narrow_values(encoder: VisionTransformer, value_dim: int) -> None:
    """Replace every block's attention by one with ``value_dim`` value channels (fresh init)."""
    dim, heads = encoder.config.embed_dim, encoder.config.num_heads
    for block in encoder.blocks:
        block.attn = Attention(dim, heads, qkv_bias=True, value_dim=value_dim)
        block.attn.apply(init_linear_trunc_normal)
    set_attention_metadata(encoder, encoder.grid_size, encoder.num_prefix_tokens)


ENCODER_FIELDS = frozenset(ViTConfig.__dataclass_fields__) - {"num_classes"}


def seg_vit(encoder: str = "small", patch_size: int = 8, num_classes: int = 2, decoder_width: int = DECODER_WIDTH,
            value_reduction: int = 1, **encoder_overrides) -> SegmentationViT:
    """A segmentation ViT by encoder size name (``tiny``, ``small``, ``base``, ``large``).

    Args:
        encoder: ViT size name (``vit.vit_config``).
        patch_size: a power of two (the decoder has ``log2(patch_size)`` 2x blocks).
        num_classes: K per-pixel classes.
        decoder_width: decoder channels after the stem.
        value_reduction: ``Dv = D / value_reduction``.
        **encoder_overrides: ``ViTConfig`` fields (``img_size``, ``in_chans``, ``depth``, ...).

    Raises:
        TypeError: an override that is no ``ViTConfig`` field.

    Example:
        >>> seg_vit("tiny", img_size=32, num_classes=3, depth=1, decoder_width=64)(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 3, 32, 32])
    """
    unknown = sorted(set(encoder_overrides) - ENCODER_FIELDS)
    if unknown:
        raise TypeError(f"unknown segmentation model fields {unknown}; encoder fields: {sorted(ENCODER_FIELDS)}")
    enc = vit_config(encoder, patch_size=patch_size, num_classes=0, **encoder_overrides)
    return SegmentationViT(SegmentationConfig(enc, num_classes, decoder_width, value_reduction))

