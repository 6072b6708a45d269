"""Static description of one binary-attention call, shared by the reference and the kernels."""
from __future__ import annotations

from dataclasses import dataclass

WEIGHTINGS = ("none", "mean_abs", "token", "bilinear")
BIAS_KINDS = ("none", "head", "table", "dense", "mask")
GRAD_MODES = ("ste", "stopgrad", "hamming")
PV_QUANTS = ("none", "int8")


@dataclass(frozen=True)
class CallSpec:
    """Everything about a call that is not a tensor.

    Attributes:
        scale: softmax scale multiplying ``a_i * b_j * h_ij``.
        weighting: how the per-token scalars ``a``, ``b`` are formed (``WEIGHTINGS``).
        bias_kind: the form of ``beta`` (``BIAS_KINDS``).
        grid: ``(Gh, Gw, prefix_tokens)`` for ``bias_kind == "table"``, else ``()``.
        grad_mode: ``"ste"``, ``"stopgrad"`` or ``"hamming"`` (SPEC §4).
        pv_quant: ``"none"`` or ``"int8"`` (8-bit P and V with straight-through gradients).
        ste_clip: the clipped STE passes gradient where ``|x| <= ste_clip``.
    """

    scale: float
    weighting: str = "mean_abs"
    bias_kind: str = "none"
    grid: tuple[int, ...] = ()
    grad_mode: str = "ste"
    pv_quant: str = "none"
    ste_clip: float = 1.0
    save_bits: bool = True

    @property
    def planes(self) -> int:
        """Sign planes per token: 2 for the bilinear (two Bernoulli samples) weighting, else 1."""
        return 2 if self.weighting == "bilinear" else 1

    @property
    def saves_clip_bits(self) -> bool:
        """The STE backward needs the packed ``|x| <= ste_clip`` bits of q and k."""
        return self.grad_mode == "ste"
