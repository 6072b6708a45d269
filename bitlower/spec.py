"""Static description of one binary-attention call, shared by the reference and the kernels."""
from __future__ import annotations

from dataclasses import dataclass

WEIGHTINGS = ("none", "mean_abs", "token", "bilinear")
BIAS_KINDS = ("none", "head", "table", "dense", "mask")
GRAD_MODES = ("ste", "stopgrad", "hamming")
PV_QUANTS = ("none", "int8")
# The static arguments of both operators, in schema order, after the tensors (``CallSpec.op_args``).
OP_ARGS = ("scale", "weighting", "bias_kind", "grid", "grad_mode", "pv_quant", "ste_clip")


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

    @classmethod
    def from_op_args(cls, scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip,
                     save_bits=True) -> "CallSpec":
        """The spec of the operators' positional arguments ``OP_ARGS`` (``bitlower.ops``)."""
        return cls(scale=scale, weighting=weighting, bias_kind=bias_kind, grid=tuple(grid), grad_mode=grad_mode,
                   pv_quant=pv_quant, ste_clip=ste_clip, save_bits=save_bits)

    def op_args(self) -> tuple:
        """The operators' positional arguments ``OP_ARGS`` for this spec (the inverse of ``from_op_args``)."""
        return (self.scale, self.weighting, self.bias_kind, list(self.grid), self.grad_mode, self.pv_quant,
                float(self.ste_clip))

    @property
    def qk_grad(self) -> bool:
        """q and k get a gradient (every mode but ``stopgrad``)."""
        return self.grad_mode != "stopgrad"

    @property
    def mean_abs_chain(self) -> bool:
        """The ``mean_abs`` scalars' gradient reaches q and k (``sum_i da_i sgn(q) / (N D)``)."""
        return self.weighting == "mean_abs" and self.qk_grad

    @property
    def planes(self) -> int:
        """Sign planes per token: 2 for the bilinear (two Bernoulli samples) weighting, else 1."""
        return 2 if self.weighting == "bilinear" else 1

    @property
    def saves_clip_bits(self) -> bool:
        """The STE backward needs the packed ``|x| <= ste_clip`` bits of q and k."""
        return self.grad_mode == "ste"
