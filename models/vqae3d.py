"""3D vector-quantised auto-encoder on non-overlapping patches (BinaryFormer Appendix A.2).

A ``P``^3 patch is encoded to ``l x l x l`` latent vectors of width C (the seed: P = 32, l = 2,
C = 384), each quantised by 8 EMA sub-codebooks of 64 entries (``MultiHeadEMACodebook``) and decoded
back to the patch. A whole volume (1, D, H, W) is cut into patches, encoded patch by patch and its
codes assembled into one latent grid (D/P*l, H/P*l, W/P*l): 160 x 224 x 192 voxels give 10 x 14 x 12
tokens of 8 codes. The patches never see each other (block artefacts are possible, as in the seed).

Encoder: a 3x3x3 convolution, then per halving a residual block and a stride-2 convolution, a residual
block, GroupNorm, SiLU and a 1x1x1 projection to C. The decoder mirrors it with nearest-neighbour
upsampling. With the default channels (32, 64, 128, 256, 256) at P = 32, l = 2 the decoder has
13.8M parameters (the seed's: 12M).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .vq_codebook import MultiHeadEMACodebook


@dataclass(frozen=True)
class VQAE3DConfig:
    """Shape of the 3D VQ auto-encoder.

    Args:
        patch_size: P, the side of the cubic patches.
        latent_per_patch: l, latent tokens per patch side; P / l must be a power of two.
        in_channels: image channels.
        base_channels, max_channels: stage ``i`` has ``min(base * 2**i, max)`` channels.
        embed_dim: C, the latent width.
        codebook_heads, codebook_size: sub-codebooks and entries per sub-codebook.
        decay, beta, restart_threshold: EMA decay, commitment weight and dead-entry restart level.
        normalize_codes: unit-length code pieces and entries (``MultiHeadEMACodebook(normalize=...)``).

    Raises:
        ValueError: P / l is not a power of two, or ``codebook_heads`` does not divide C.
    """

    patch_size: int = 32
    latent_per_patch: int = 2
    in_channels: int = 1
    base_channels: int = 32
    max_channels: int = 256
    embed_dim: int = 384
    codebook_heads: int = 8
    codebook_size: int = 64
    decay: float = 0.99
    beta: float = 0.25
    restart_threshold: float = 1.0
    normalize_codes: bool = True

    def __post_init__(self):
        factor = self.patch_size // max(self.latent_per_patch, 1)
        if (self.latent_per_patch < 1 or self.patch_size % self.latent_per_patch or factor < 2
                or factor & (factor - 1)):
            raise ValueError(f"patch_size / latent_per_patch must be a power of two >= 2, got "
                             f"{self.patch_size} / {self.latent_per_patch}")
        if self.embed_dim % self.codebook_heads:
            raise ValueError(f"codebook_heads={self.codebook_heads} must divide embed_dim={self.embed_dim}")

    @property
    def stages(self) -> int:
        return int(math.log2(self.patch_size // self.latent_per_patch))

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(min(self.base_channels * 2 ** i, self.max_channels) for i in range(self.stages + 1))

    def latent_grid(self, shape) -> tuple[int, int, int]:
        """Latent grid of a volume of ``shape`` (D, H, W).

        Raises:
            ValueError: the patch size does not divide the shape.
        """
        if any(s % self.patch_size for s in shape):
            raise ValueError(f"patch size {self.patch_size} must divide the volume shape {tuple(shape)}")
        return tuple(s // self.patch_size * self.latent_per_patch for s in shape)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels, eps=1e-6)


class ResBlock3D(nn.Module):
    """GroupNorm, SiLU, 3x3x3 convolution, twice, plus the input (1x1x1 projection when widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv3d(cin, cout, 3, padding=1),
                                  _norm(cout), nn.SiLU(), nn.Conv3d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder3D(nn.Module):
    """Patches (B, Cin, P, P, P) -> latents (B, C, l, l, l)."""

    def __init__(self, config: VQAE3DConfig):
        super().__init__()
        ch = config.channels
        layers: list[nn.Module] = [nn.Conv3d(config.in_channels, ch[0], 3, padding=1)]
        for i in range(config.stages):
            layers += [ResBlock3D(ch[i], ch[i]), nn.Conv3d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
        layers += [ResBlock3D(ch[-1], ch[-1]), _norm(ch[-1]), nn.SiLU(), nn.Conv3d(ch[-1], config.embed_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder3D(nn.Module):
    """Latents (B, C, l, l, l) -> patches (B, Cin, P, P, P)."""

    def __init__(self, config: VQAE3DConfig):
        super().__init__()
        ch = config.channels
        layers: list[nn.Module] = [nn.Conv3d(config.embed_dim, ch[-1], 3, padding=1), ResBlock3D(ch[-1], ch[-1])]
        for i in reversed(range(config.stages)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(ch[i + 1], ch[i], 3, padding=1),
                       ResBlock3D(ch[i], ch[i])]
        layers += [_norm(ch[0]), nn.SiLU(), nn.Conv3d(ch[0], config.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def volume_to_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B * nD * nH * nW, C, p, p, p), patches row-major over (nD, nH, nW).

    Raises:
        ValueError: ``patch`` does not divide D, H and W.
    """
    b, c, d, h, w = x.shape
    if d % patch or h % patch or w % patch:
        raise ValueError(f"patch {patch} must divide the volume shape {(d, h, w)}")
    x = x.reshape(b, c, d // patch, patch, h // patch, patch, w // patch, patch)  # (B, C, nD, p, nH, p, nW, p)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, nD, nH, nW, C, p, p, p)
    return x.reshape(-1, c, patch, patch, patch)  # (B*nD*nH*nW, C, p, p, p)


def patches_to_volume(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of ``volume_to_patches``: (B * nD * nH * nW, C, p, p, p) -> (B, C, nD*p, nH*p, nW*p)."""
    nd, nh, nw = grid
    c, p = x.shape[1], x.shape[-1]
    x = x.reshape(-1, nd, nh, nw, c, p, p, p)  # (B, nD, nH, nW, C, p, p, p)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, nD, p, nH, p, nW, p)
    return x.reshape(x.shape[0], c, nd * p, nh * p, nw * p)  # (B, C, D, H, W)


class VQAutoEncoder3D(nn.Module):
    """Encoder, multi-head EMA codebook and decoder over ``P``^3 patches; see the module docstring.

    Example:
        >>> cfg = VQAE3DConfig(patch_size=8, latent_per_patch=2, base_channels=8, max_channels=16, embed_dim=16,
        ...                    codebook_heads=2, codebook_size=4)
        >>> model = VQAutoEncoder3D(cfg)
        >>> model(torch.zeros(3, 1, 8, 8, 8))["recon"].shape
        torch.Size([3, 1, 8, 8, 8])
        >>> model.encode_volume(torch.zeros(1, 1, 16, 8, 24)).shape
        torch.Size([1, 4, 2, 6, 2])
    """

    def __init__(self, config: VQAE3DConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder3D(config)
        self.codebook = MultiHeadEMACodebook(config.embed_dim, config.codebook_heads, config.codebook_size,
                                             config.decay, beta=config.beta,
                                             restart_threshold=config.restart_threshold,
                                             normalize=config.normalize_codes)
        self.decoder = Decoder3D(config)

    def _quantize_latents(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c, l = z.shape[0], z.shape[1], z.shape[-1]
        flat = z.permute(0, 2, 3, 4, 1).reshape(-1, c)  # (B*l^3, C)
        out = self.codebook(flat)
        out["quantized"] = out["quantized"].reshape(b, l, l, l, c).permute(0, 4, 1, 2, 3)  # (B, C, l, l, l)
        out["codes"] = out["codes"].reshape(b, l, l, l, -1)  # (B, l, l, l, heads)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Patches (B, Cin, P, P, P) -> ``recon`` (same shape), ``codes`` (B, l, l, l, heads),
        ``commitment`` and ``perplexity`` (scalars)."""
        out = self._quantize_latents(self.encoder(x))
        out["recon"] = self.decoder(out.pop("quantized"))
        return out

    def _check_volume(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected volumes (B, {self.config.in_channels}, D, H, W), got {tuple(x.shape)}")
        self.config.latent_grid(x.shape[2:])

    @torch.no_grad()
    def encode_volume(self, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Volumes (B, Cin, D, H, W) -> codes (B, Ld, Lh, Lw, heads), encoding ``chunk`` patches at a time."""
        self._check_volume(x)
        p, l = self.config.patch_size, self.config.latent_per_patch
        grid = tuple(s // p for s in x.shape[2:])
        patches = volume_to_patches(x, p)  # (B*nP, Cin, P, P, P)
        codes = torch.cat([self.codebook.quantize(self._flat_latents(part)) for part in patches.split(chunk)])
        codes = codes.reshape(-1, l, l, l, self.config.codebook_heads).permute(0, 4, 1, 2, 3)  # (B*nP, heads, l, l, l)
        return patches_to_volume(codes, grid).permute(0, 2, 3, 4, 1)  # (B, Ld, Lh, Lw, heads)

    def _flat_latents(self, patches: torch.Tensor) -> torch.Tensor:
        z = self.encoder(patches)  # (n, C, l, l, l)
        return z.permute(0, 2, 3, 4, 1).reshape(-1, z.shape[1])  # (n*l^3, C)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Codes (B, Ld, Lh, Lw, heads) -> volumes (B, Cin, Ld/l*P, Lh/l*P, Lw/l*P), ``chunk`` patches at a time."""
        l = self.config.latent_per_patch
        if codes.dim() != 5 or codes.shape[-1] != self.config.codebook_heads or any(s % l for s in codes.shape[1:4]):
            raise ValueError(f"expected codes (B, Ld, Lh, Lw, {self.config.codebook_heads}) with sides divisible by "
                             f"{l}, got {tuple(codes.shape)}")
        z = self.codebook.lookup(codes).permute(0, 4, 1, 2, 3)  # (B, C, Ld, Lh, Lw)
        grid = tuple(s // l for s in codes.shape[1:4])
        latents = volume_to_patches(z, l)  # (B*nP, C, l, l, l)
        patches = torch.cat([self.decoder(part) for part in latents.split(chunk)])  # (B*nP, Cin, P, P, P)
        return patches_to_volume(patches, grid)  # (B, Cin, D, H, W)

    @torch.no_grad()
    def reconstruct_volume(self, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """``decode_codes(encode_volume(x))``: (B, Cin, D, H, W) -> same shape."""
        return self.decode_codes(self.encode_volume(x, chunk), chunk)


def vqae3d(**overrides) -> VQAutoEncoder3D:
    """The seed's VQ-AE (32^3 patches, 2^3 codes each, 8 x 64 codebooks, C = 384); overrides go to the config."""
    return VQAutoEncoder3D(VQAE3DConfig(**overrides))
