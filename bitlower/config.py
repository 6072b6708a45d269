"""Validated configuration of the binary-attention math."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from bitlower.validation import check_modes


@dataclass(frozen=True)
class AttentionConfig:
    """How Q·Kᵀ is binarized and trained (SPEC §3-4).

    Args:
        weighting: ``"mean_abs"`` (per batch and head), ``"token"`` (learned, given as ``a``/``b``),
            ``"bilinear"`` (two Bernoulli samples) or ``"none"``.
        grad_mode: ``"ste"`` (clipped straight-through sign), ``"stopgrad"`` (no gradient to q, k)
            or ``"hamming"`` (only the scalars learn).
        pv_quant: ``"none"`` or ``"int8"`` (8-bit P and V, straight-through gradients).
        ste_clip: the STE passes gradient where ``|x| <= ste_clip``.

    Raises:
        ValueError: an unknown mode name or a non-positive ``ste_clip``.

    Example:
        >>> AttentionConfig(grad_mode="hamming").weighting
        'mean_abs'
    """

    weighting: str = "mean_abs"
    grad_mode: str = "ste"
    pv_quant: str = "none"
    ste_clip: float = 1.0

    def __post_init__(self):
        check_modes(self.weighting, self.grad_mode, self.pv_quant, self.ste_clip)

    def call_spec(self, scale: float, bias_kind: str = "none", grid=()) -> "CallSpec":
        """The operator's ``CallSpec`` for one call under this config."""
        from bitlower.spec import CallSpec

        return CallSpec(scale=scale, weighting=self.weighting, bias_kind=bias_kind, grid=tuple(grid),
                        grad_mode=self.grad_mode, pv_quant=self.pv_quant, ste_clip=float(self.ste_clip))

    def as_kwargs(self) -> dict:
        """Keyword arguments for :func:`bitlower.binary_attention`."""
        return asdict(self)
