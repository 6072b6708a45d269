"""Validated configuration of ``torch.compile(backend="bitlower")``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from bitlower.config import AttentionConfig
from bitlower.validation import check_choice

# Weightings a model nobody prepared can use: the learned ("token") and sampled
# ("bilinear") kinds need parameters or a random source the graph does not have.
BACKEND_WEIGHTINGS = ("mean_abs", "none")
MASK_HANDLING = ("carry", "skip")
CAUSAL_HANDLING = ("mask", "skip")
GQA_HANDLING = ("repeat", "skip")


@dataclass(frozen=True)
class BackendConfig:
    """What the bitlower backend rewrites and how (SPEC §3 "a model nobody prepared").

    Args:
        weighting: ``"mean_abs"`` (per batch and head, the default) or ``"none"``.
        grad_mode: ``"ste"``, ``"stopgrad"`` or ``"hamming"`` (SPEC §4).
        pv_quant: ``"none"`` or ``"int8"``.
        ste_clip: the STE passes gradient where ``|x| <= ste_clip``.
        masks: ``"carry"``: a mask or additive bias the model applies to the scores becomes
            the operator's bias; ``"skip"``: such sites are left alone.
        causal: ``"mask"``: SDPA ``is_causal`` becomes a bool mask; ``"skip"``: left alone.
        gqa: ``"repeat"``: SDPA ``enable_gqa`` with fewer key heads repeats k and v per group;
            ``"skip"``: left alone.
        skip: ``fnmatch`` patterns over module paths (``"blocks.0.*"``, ``"*.cross_attn"``)
            whose sites are left alone.
        min_seq_len: sites with fewer query tokens than this are left alone.

    Raises:
        ValueError: an unknown mode name, a negative ``min_seq_len``, patterns not strings.

    Example:
        >>> BackendConfig(skip=("head.*",), min_seq_len=64).weighting
        'mean_abs'
        >>> BackendConfig.from_options({"grad_mode": "hamming"}).grad_mode
        'hamming'
    """

    weighting: str = "mean_abs"
    grad_mode: str = "ste"
    pv_quant: str = "none"
    ste_clip: float = 1.0
    masks: str = "carry"
    causal: str = "mask"
    gqa: str = "repeat"
    skip: tuple[str, ...] = ()
    min_seq_len: int = 0

    def __post_init__(self):
        check_choice("weighting", self.weighting, BACKEND_WEIGHTINGS)
        self.attention  # noqa: B018 - the modes are checked in one place: AttentionConfig
        check_choice("masks", self.masks, MASK_HANDLING)
        check_choice("causal", self.causal, CAUSAL_HANDLING)
        check_choice("gqa", self.gqa, GQA_HANDLING)
        if not isinstance(self.skip, (str, list, tuple, set, frozenset)):
            raise ValueError(f"skip must be a module-path pattern or a sequence of them (strings), got {self.skip!r}")
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)
        if not all(isinstance(p, str) for p in skip):
            raise ValueError(f"skip must be module-path patterns (strings), got {self.skip!r}")
        object.__setattr__(self, "skip", skip)
        if isinstance(self.min_seq_len, bool) or not isinstance(self.min_seq_len, int) or self.min_seq_len < 0:
            raise ValueError(f"min_seq_len must be a non-negative int, got {self.min_seq_len!r}")

    @property
    def attention(self) -> AttentionConfig:
        """The binary math of every rewritten site (``weighting``, ``grad_mode``, ``pv_quant``, ``ste_clip``)."""
        return AttentionConfig(self.weighting, self.grad_mode, self.pv_quant, self.ste_clip)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The option keys ``torch.compile(..., options=...)`` takes for bitlower."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "BackendConfig":
        """A config from a dict of bitlower option keys.

        Raises:
            ValueError: a key that is not a bitlower option, or an invalid value.
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ValueError(f"unknown bitlower option(s) {unknown}; bitlower options are {list(cls.option_names())}")
        return cls(**options)

    def replace(self, **changes) -> "BackendConfig":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)
