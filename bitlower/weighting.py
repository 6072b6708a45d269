"""Weighting scalars that are learned or sampled: BinaryFormer's ``token`` and ``bilinear``.

``sigma(x) = 4 * tanh(x / 2)`` is the squashing both use (SPEC §3).
"""
from __future__ import annotations

import torch
from torch import nn

from bitlower.packing import sgn

BILINEAR_EPS = 1e-6  # keeps w1 = w2 = 1/2 where both samples match p exactly (d1 = d2 = 0)
# How the bilinear weighting draws its two sign planes (``bitlower.binary_attention(planes=...)``).
BILINEAR_PLANES = ("sampled", "stratified")
# Deterministic bilinear planes (eval and converted models): y_s = 1[u_s < p] with the fixed
# quantiles u = (1/4, 3/4) in place of two uniform draws, so each plane is a stratified sample.
STRATIFIED_QUANTILES = (0.25, 0.75)


def squash(x: torch.Tensor) -> torch.Tensor:
    """``sigma(x) = 4 tanh(x / 2)``."""
    return 4.0 * torch.tanh(x / 2.0)


class GroupedLinear(nn.Module):
    """``groups`` independent linears over equal slices of the last dim."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"in_features {in_features} and out_features {out_features} must divide by groups {groups}")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.kaiming_uniform_(self.weight.view(-1, in_features // groups), a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = x.unflatten(-1, (self.groups, -1))  # (..., G, in/G)
        y = torch.einsum("...gi,goi->...go", xg, self.weight)  # (..., G, out/G)
        return y.flatten(-2) + self.bias


class TokenWeighting(nn.Module):
    """``a_i = theta(concat(sigma(x_i), sgn(x_i)))[h]`` per token and head (BinaryFormer Hamming).

    ``theta`` is Linear(2C, C/2) -> GELU -> Linear(C/2, H) with ``C = H * D``; with
    ``grouped=True`` both linears are grouped by head (HammingG). The last layer starts at
    weight 0 and bias ``init_value`` so every scalar starts at ``init_value``.

    Example:
        >>> w = TokenWeighting(heads=2, head_dim=8)
        >>> w(torch.randn(3, 2, 5, 8)).shape
        torch.Size([3, 2, 5])
    """

    def __init__(self, heads: int, head_dim: int, grouped: bool = False, init_value: float = 1.0):
        super().__init__()
        channels = heads * head_dim
        self.heads, self.grouped = heads, grouped
        if grouped:
            self.fc1 = GroupedLinear(2 * channels, channels // 2, heads)
            self.fc2 = GroupedLinear(channels // 2, heads, heads)
        else:
            self.fc1 = nn.Linear(2 * channels, channels // 2)
            self.fc2 = nn.Linear(channels // 2, heads)
        self.act = nn.GELU()
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, H, L, D)`` -> scalars ``(B, H, L)``."""
        bsz, heads, length, dim = x.shape
        if self.grouped:
            feats = torch.cat([squash(x), sgn(x).detach()], dim=-1)  # (B, H, L, 2D)
            feats = feats.transpose(1, 2).reshape(bsz, length, heads * 2 * dim)  # (B, L, H*2D), head-major
        else:
            tokens = x.transpose(1, 2).reshape(bsz, length, heads * dim)  # (B, L, C)
            feats = torch.cat([squash(tokens), sgn(tokens).detach()], dim=-1)  # (B, L, 2C)
        out = self.fc2(self.act(self.fc1(feats)))  # (B, L, H)
        return out.transpose(1, 2)  # (B, H, L)


def bilinear_planes(x: torch.Tensor, generator: torch.Generator | None = None):
    """Two Bernoulli sign planes of ``x`` and their bilinear weights (BinaryFormer HammingB).

    ``p = clamp(sigma(x) / 2 + 1/2, 0, 1)``; ``y1, y2 ~ Bernoulli(p)``;
    ``d_s = mean_D |p - y_s|``; ``w1 = d2 / (d1 + d2)``, ``w2 = d1 / (d1 + d2)``.

    Returns:
        ``planes`` ``(B, H, L, 2, D)`` holding ``2 y - 1`` (no gradient) and ``weights``
        ``(B, H, L, 2)`` (differentiable w.r.t. ``x``).
    """
    p = (squash(x) / 2 + 0.5).clamp(0.0, 1.0)  # (B, H, L, D)
    y1 = torch.bernoulli(p.detach(), generator=generator)
    y2 = torch.bernoulli(p.detach(), generator=generator)
    d1 = (p - y1).abs().mean(-1)  # (B, H, L)
    d2 = (p - y2).abs().mean(-1)
    total = d1 + d2 + 2 * BILINEAR_EPS
    weights = torch.stack([(d2 + BILINEAR_EPS) / total, (d1 + BILINEAR_EPS) / total], dim=-1)  # (B, H, L, 2)
    planes = torch.stack([2 * y1 - 1, 2 * y2 - 1], dim=-2)  # (B, H, L, 2, D)
    return planes.to(x.dtype), weights


def stratified_planes(x: torch.Tensor):
    """Two deterministic sign planes of ``x`` and their bilinear weights.

    The same weights as ``bilinear_planes`` (``d_s = mean_D |p - y_s|``, ``w1 = d2/(d1+d2)``,
    ``w2 = d1/(d1+d2)``), with ``y_s = 1[u_s < p]`` at the fixed quantiles ``STRATIFIED_QUANTILES``
    instead of Bernoulli draws.

    Returns:
        planes ``(B, H, L, 2, D)`` of ``2 y - 1`` (no gradient) and weights ``(B, H, L, 2)``.
    """
    p = (squash(x) / 2 + 0.5).clamp(0.0, 1.0)  # (B, H, L, D)
    y1, y2 = ((p.detach() > u).to(p.dtype) for u in STRATIFIED_QUANTILES)
    d1 = (p - y1).abs().mean(-1)  # (B, H, L)
    d2 = (p - y2).abs().mean(-1)
    total = d1 + d2 + 2 * BILINEAR_EPS
    weights = torch.stack([(d2 + BILINEAR_EPS) / total, (d1 + BILINEAR_EPS) / total], dim=-1)  # (B, H, L, 2)
    planes = torch.stack([2 * y1 - 1, 2 * y2 - 1], dim=-2)  # (B, H, L, 2, D)
    return planes.to(x.dtype), weights.to(x.dtype)
