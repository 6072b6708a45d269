"""The learned parts of one binarized attention module and its call to ``bitlower.binary_attention``.

``binarize_`` attaches one ``BinaryAttentionCore`` to every attention module it handles, as the
submodule ``binary``; the module's own projections compute q, k, v and hand them to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bitlower.functional import binary_attention
from bitlower.relpos import gather_table_bias, table_rows
from bitlower.weighting import TokenWeighting

from .config import BinarizeConfig


@dataclass(frozen=True)
class Geometry:
    """Shape facts a handler reads off an attention module.

    Attributes:
        heads: H.
        head_dim: D of q and k.
        grid: ``(Gh, Gw, prefix_tokens)`` of the token sequence, or None when unknown.
    """

    heads: int
    head_dim: int
    grid: tuple[int, int, int] | None = None


class BinaryAttentionCore(nn.Module):
    """Learned bias and weighting of one attention module, and the binary-attention call.

    Parameters (as the config asks): ``rel_pos_table`` ``(rows, H)`` (trunc-normal, std
    ``bias_init_std``), ``head_bias`` ``(H,)`` (zeros), ``theta_q``/``theta_k``
    (``bitlower.TokenWeighting``, every scalar starts at 1).

    Args:
        geometry: heads, head dim and patch grid of the host module.
        config: the ``BinarizeConfig``.

    Raises:
        ValueError: ``bias="relpos"`` without a patch grid.

    Example:
        >>> core = BinaryAttentionCore(Geometry(2, 8, (2, 2, 1)), BinarizeConfig())
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> core(q, k, v, scale=8 ** -0.5).shape
        torch.Size([1, 2, 5, 8])
    """

    def __init__(self, geometry: Geometry, config: BinarizeConfig):
        super().__init__()
        self.geometry = geometry
        self.attention = config.attention
        self.bias_kind = {"none": "none", "head": "head", "relpos": "table"}[config.bias]
        self.converted = False
        if self.bias_kind == "table":
            if geometry.grid is None:
                raise ValueError("bias 'relpos' needs the patch grid; pass BinarizeConfig(grid=(Gh, Gw, prefix))")
            gh, gw, _ = geometry.grid
            self.rel_pos_table = nn.Parameter(torch.empty(table_rows(gh, gw), geometry.heads))
            # Cut at +-2 (absolute), as in DeiT/BinaryAttention: at std 0.02 that is a plain normal.
            nn.init.trunc_normal_(self.rel_pos_table, std=config.bias_init_std)
        elif self.bias_kind == "head":
            self.head_bias = nn.Parameter(torch.zeros(geometry.heads))
        if self.attention.weighting == "token":
            self.theta_q = TokenWeighting(geometry.heads, geometry.head_dim, grouped=config.grouped_theta)
            self.theta_k = TokenWeighting(geometry.heads, geometry.head_dim, grouped=config.grouped_theta)

    def learned_bias(self) -> torch.Tensor | None:
        """The learned ``beta`` in the operator's form (``bias_kind``), or None."""
        if self.bias_kind == "table":
            return self.rel_pos_table
        if self.bias_kind == "head":
            return self.head_bias
        return None

    def _bias(self, mask: torch.Tensor | None, dtype: torch.dtype):
        """``(bias, kind)`` for the operator: the learned bias, the model's mask, or their sum."""
        learned = self.learned_bias()
        if mask is None:
            return learned, self.bias_kind
        if learned is None:
            return mask, ("mask" if mask.dtype == torch.bool else "dense")
        if self.bias_kind == "table":
            dense = gather_table_bias(learned, self.geometry.grid)  # (1, H, N, N)
        else:
            dense = learned.view(1, -1, 1, 1)  # (1, H, 1, 1)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
        return dense.to(dtype) + mask.to(dtype), "dense"

    def forward(self, q, k, v, *, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, N, D)``, ``(B, H, M, D)``, ``(B, H, M, Dv)`` -> ``(B, H, N, Dv)``.

        Args:
            scale: the softmax scale the full-precision module uses.
            mask: the model's mask, bool (False -> -inf) or float additive, broadcastable to
                ``(B, H, N, M)``.
        """
        bias, kind = self._bias(mask, q.dtype)
        grid = self.geometry.grid if kind == "table" else None
        cfg = self.attention
        common = dict(grad_mode=cfg.grad_mode, pv_quant=cfg.pv_quant, ste_clip=cfg.ste_clip)
        if cfg.weighting == "bilinear" and (self.converted or not self.training):
            common["planes"] = "stratified"  # deterministic planes in eval and converted models
        a = b = None
        if cfg.weighting == "token":
            a, b = self.theta_q(q).to(q.dtype), self.theta_k(k).to(k.dtype)  # (B, H, N), (B, H, M)
        return binary_attention(q, k, v, bias=bias, bias_kind=kind, grid=grid, scale=scale,
                                weighting=cfg.weighting, a=a, b=b, **common)

    def convert(self) -> None:
        """Freeze the learned parts for deployment; bilinear planes become deterministic."""
        self.converted = True
        self.requires_grad_(False)

    def extra_repr(self) -> str:
        cfg = self.attention
        return (f"heads={self.geometry.heads}, head_dim={self.geometry.head_dim}, grid={self.geometry.grid}, "
                f"weighting={cfg.weighting}, bias={self.bias_kind}, grad_mode={cfg.grad_mode}, "
                f"pv_quant={cfg.pv_quant}, converted={self.converted}")
