"""What ``binarize_`` adds to each attention module, and the presets named after published methods.

A ``BinarizeConfig`` is the whole description of a binarized model's attention: the operator
modes (``bitlower.AttentionConfig``), the learned bias, the token-weighting network shape and
where the patch grid comes from. Presets return configs that reproduce a method (SPEC §7-8).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from bitlower.config import AttentionConfig

BIASES = ("none", "head", "relpos")


@dataclass(frozen=True)
class BinarizeConfig:
    """How ``binarize_`` turns full-precision attention into binary attention.

    Args:
        attention: operator modes (weighting, gradient mode, 8-bit P·V, STE clip).
        bias: learned additive bias: ``"none"``, ``"head"`` (one scalar per head, init 0) or
            ``"relpos"`` (relative-position table over the patch grid, trunc-normal init).
        bias_init_std: standard deviation of the relative-position table's trunc-normal init
            (0.02 in BinaryAttention).
        grouped_theta: with ``weighting="token"``, the θ networks are grouped by head (HammingG).
        grid: ``(Gh, Gw, prefix_tokens)`` for every module, overriding what the handlers infer
            from the model (needed for ``bias="relpos"`` where the model does not say it).
        keep_teacher: keep a frozen full-precision copy of the model as the distillation teacher.
        strict: raise when an attention-like module has no handler (default: log and report).

    Raises:
        ValueError: an unknown bias, a non-positive init std, a malformed grid.

    Example:
        >>> cfg = BinarizeConfig(bias="head")
        >>> cfg.attention.weighting
        'mean_abs'
    """

    attention: AttentionConfig = field(default_factory=AttentionConfig)
    bias: str = "relpos"
    bias_init_std: float = 0.02
    grouped_theta: bool = False
    grid: tuple[int, int, int] | None = None
    keep_teacher: bool = True
    strict: bool = False

    def __post_init__(self):
        if not isinstance(self.attention, AttentionConfig):
            raise TypeError(f"attention must be an AttentionConfig, got {type(self.attention).__name__}")
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {list(BIASES)}, got {self.bias!r}")
        if not self.bias_init_std > 0:
            raise ValueError(f"bias_init_std must be positive, got {self.bias_init_std}")
        if self.grid is not None:
            grid = tuple(int(g) for g in self.grid)
            if len(grid) != 3 or min(grid[:2]) < 1 or grid[2] < 0:
                raise ValueError(f"grid must be (Gh, Gw, prefix_tokens) with Gh, Gw >= 1, got {self.grid}")
            object.__setattr__(self, "grid", grid)

    def to_dict(self) -> dict:
        """Plain-type description (stored in checkpoints, compared on resume)."""
        out = asdict(self)
        out["grid"] = None if self.grid is None else list(self.grid)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "BinarizeConfig":
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["attention"] = AttentionConfig(**data["attention"])
        if data.get("grid") is not None:
            data["grid"] = tuple(data["grid"])
        return cls(**data)


def binary_attention_preset(pv_quant: str = "none", **overrides) -> BinarizeConfig:
    """BinaryAttention (CVPR 2026): ``mean|q| * sgn(q)`` with a clipped STE, relative-position bias.

    Args:
        pv_quant: ``"int8"`` for the method's 8-bit P·V, ``"none"`` to keep P·V in full precision.
        **overrides: other ``BinarizeConfig`` fields.
    """
    attention = AttentionConfig(weighting="mean_abs", grad_mode="ste", pv_quant=pv_quant)
    return replace(BinarizeConfig(attention=attention, bias="relpos"), **overrides)


def hamming_preset(**overrides) -> BinarizeConfig:
    """BinaryFormer "Hamming": token weighting θ_Q/θ_K (plain MLP), only the scalars learn."""
    attention = AttentionConfig(weighting="token", grad_mode="hamming")
    return replace(BinarizeConfig(attention=attention, bias="none"), **overrides)


def hamming_g_preset(**overrides) -> BinarizeConfig:
    """BinaryFormer "HammingG": token weighting with head-grouped θ networks."""
    return replace(hamming_preset(), grouped_theta=True, **overrides)


def hamming_b_preset(**overrides) -> BinarizeConfig:
    """BinaryFormer "HammingB": two Bernoulli sign planes with bilinear weights."""
    attention = AttentionConfig(weighting="bilinear", grad_mode="hamming")
    return replace(BinarizeConfig(attention=attention, bias="none"), **overrides)


def sign_ste_preset(weighting: str = "none", **overrides) -> BinarizeConfig:
    """Sign baseline: ``sgn(q) sgn(k)ᵀ`` with a clipped straight-through gradient (BinaryFormer "sign").

    Args:
        weighting: ``"none"`` (BinaryFormer) or ``"mean_abs"``.
    """
    attention = AttentionConfig(weighting=weighting, grad_mode="ste")
    return replace(BinarizeConfig(attention=attention, bias="none"), **overrides)


def sign_stopgrad_preset(weighting: str = "none", **overrides) -> BinarizeConfig:
    """Sign baseline with no gradient through the scores to q and k (BinaryFormer "sign st.gr.")."""
    attention = AttentionConfig(weighting=weighting, grad_mode="stopgrad")
    return replace(BinarizeConfig(attention=attention, bias="none"), **overrides)


PRESETS: dict[str, Callable[..., BinarizeConfig]] = {
    "binary_attention": binary_attention_preset,
    "hamming": hamming_preset,
    "hamming_g": hamming_g_preset,
    "hamming_b": hamming_b_preset,
    "sign_ste": sign_ste_preset,
    "sign_stopgrad": sign_stopgrad_preset,
}


def preset(name: str, **overrides) -> BinarizeConfig:
    """The config of a named method (``PRESETS``).

    Raises:
        KeyError: an unknown name.

    Example:
        >>> preset("binary_attention", pv_quant="int8").attention.pv_quant
        'int8'
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
