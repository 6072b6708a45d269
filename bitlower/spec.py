"""Static description of one binary-attention call, shared by the reference and the kernels."""
from __future__ import annotations

from dataclasses import dataclass

from bitlower.source_hash import SOURCE_HASH

WEIGHTINGS = ("none", "mean_abs", "token", "bilinear")
BIAS_KINDS = ("none", "head", "table", "dense", "mask")
GRAD_MODES = ("ste", "stopgrad", "hamming")
PV_QUANTS = ("none", "int8")
# The static arguments of both operators, in schema order, after the tensors (``CallSpec.op_args``).
OP_ARGS = ("scale", "weighting", "bias_kind", "grid", "grad_mode", "pv_quant", "ste_clip")
# ``bitlower::binary_attention_fwd``'s parameters in schema order: the tensors, OP_ARGS, the options
# (tests/bitlower/test_call_contract.py checks this against the registered schema).
FWD_TENSORS = ("q", "k", "v", "a", "b", "bias")
FWD_OPTIONS = ("save_bits", "kernel_options", "source")
FWD_PARAMS = FWD_TENSORS + OP_ARGS + FWD_OPTIONS
FWD_DEFAULTS = {"save_bits": True, "kernel_options": "", "source": ""}
# Bias kinds whose tensor is a float the backward differentiates (a bool mask has no gradient).
GRAD_BIAS_KINDS = ("head", "table", "dense")


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

    def fwd_args(self, q, k, v, a=None, b=None, bias=None, *, kernel_options: str = "", scale=None) -> tuple:
        """``binary_attention_fwd``'s positional arguments (``FWD_PARAMS``) for this spec.

        ``scale``: a value standing in for ``self.scale`` (the rewrite pass passes a graph node).
        """
        fields = dict(scale=self.scale if scale is None else scale, weighting=self.weighting, bias_kind=self.bias_kind,
                      grid=self.grid, grad_mode=self.grad_mode, pv_quant=self.pv_quant, ste_clip=self.ste_clip)
        return fwd_op_args(q, k, v, a, b, bias, **fields, save_bits=self.save_bits, kernel_options=kernel_options)

    @property
    def qk_grad(self) -> bool:
        """q and k get a gradient (every mode but ``stopgrad``)."""
        return self.grad_mode != "stopgrad"

    @property
    def mean_abs_chain(self) -> bool:
        """The ``mean_abs`` scalars' gradient reaches q and k (``sum_i da_i sgn(q) / (N D)``)."""
        return self.weighting == "mean_abs" and self.qk_grad

    @property
    def bias_grad(self) -> bool:
        """The bias is a float tensor the backward differentiates (``GRAD_BIAS_KINDS``)."""
        return self.bias_kind in GRAD_BIAS_KINDS

    @property
    def planes(self) -> int:
        """Sign planes per token: 2 for the bilinear (two Bernoulli samples) weighting, else 1."""
        return 2 if self.weighting == "bilinear" else 1

    @property
    def saves_clip_bits(self) -> bool:
        """The STE backward needs the packed ``|x| <= ste_clip`` bits of q and k."""
        return self.grad_mode == "ste"


def fwd_op_args(q, k, v, a, b, bias, *, scale, weighting, bias_kind, grid, grad_mode, pv_quant, ste_clip,
                save_bits=True, kernel_options="") -> tuple:
    """``binary_attention_fwd``'s positional arguments (``FWD_PARAMS``) by name: the one place their order is
    written. Plain tuple building, so ``torch.compile`` traces it without a break (``bitlower.functional``)."""
    return (q, k, v, a, b, bias, scale, weighting, bias_kind, list(grid), grad_mode, pv_quant, float(ste_clip),
            bool(save_bits), kernel_options, SOURCE_HASH)  # SOURCE_HASH: caches key bitlower's version


def bind_fwd_args(args, kwargs=None) -> dict:
    """``binary_attention_fwd``'s arguments (positional ``args``, then ``kwargs``) by parameter name, defaults filled.

    Raises:
        TypeError: more arguments than ``FWD_PARAMS``, or a parameter missing.
    """
    if len(args) > len(FWD_PARAMS):
        raise TypeError(f"binary_attention_fwd takes {len(FWD_PARAMS)} arguments {FWD_PARAMS}, got {len(args)}")
    bound = {**FWD_DEFAULTS, **dict(zip(FWD_PARAMS, args)), **(kwargs or {})}
    missing = [name for name in FWD_PARAMS if name not in bound]
    if missing:
        raise TypeError(f"binary_attention_fwd call lacks {missing}")
    return bound


def spec_of_fwd_args(bound: dict) -> CallSpec:
    """The ``CallSpec`` of bound ``binary_attention_fwd`` arguments (``bind_fwd_args``)."""
    return CallSpec.from_op_args(*(bound[name] for name in OP_ARGS), save_bits=bool(bound["save_bits"]))
