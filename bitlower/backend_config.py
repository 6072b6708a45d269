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


# The options that configure the binary math: ``AttentionConfig``'s fields, given flat.
ATTENTION_OPTIONS = tuple(f.name for f in fields(AttentionConfig))


@dataclass(frozen=True, init=False)
class BackendConfig:
    """What the bitlower backend rewrites and how (SPEC §3 "a model nobody prepared").

    The binary math of every rewritten site is one ``AttentionConfig`` (``attention``), which
    checks the modes; its fields are also taken, and read, flat (``BackendConfig(grad_mode="stopgrad")``,
    ``config.grad_mode``), as the ``torch.compile`` option keys are.

    Args:
        attention: the ``AttentionConfig``; flat ``weighting`` / ``grad_mode`` / ``pv_quant`` /
            ``ste_clip`` keywords override its fields. Its weighting must be ``"mean_abs"`` (per
            batch and head, the default) or ``"none"`` (``BACKEND_WEIGHTINGS``).
        masks: ``"carry"``: a mask or additive bias the model applies to the scores becomes
            the operator's bias; ``"skip"``: such sites are left alone.
        causal: ``"mask"``: SDPA ``is_causal`` becomes a bool mask; ``"skip"``: left alone.
        gqa: ``"repeat"``: SDPA ``enable_gqa`` with fewer key heads repeats k and v per group;
            ``"skip"``: left alone.
        skip: ``fnmatch`` patterns over module paths (``"blocks.0.*"``, ``"*.cross_attn"``)
            whose sites are left alone.
        min_seq_len: sites with fewer query tokens than this are left alone.
        kernel_options: a ``bitlower.codegen.KernelOptions`` (or its ``encode()`` string) given to every
            rewritten call: the kernel plan's overrides inside compiled models, e.g.
            ``options={"kernel_options": "forward=hopper"}`` for the Gluon sm_90 forward.

    Raises:
        ValueError: an unknown mode name, a negative ``min_seq_len``, patterns not strings.
        TypeError: an unknown keyword, an ``attention`` that is not an ``AttentionConfig``.

    Example:
        >>> BackendConfig(skip=("head.*",), min_seq_len=64).weighting
        'mean_abs'
        >>> BackendConfig.from_options({"grad_mode": "hamming"}).attention
        AttentionConfig(weighting='mean_abs', grad_mode='hamming', pv_quant='none', ste_clip=1.0)
    """

    attention: AttentionConfig
    masks: str = "carry"
    causal: str = "mask"
    gqa: str = "repeat"
    skip: tuple[str, ...] = ()
    min_seq_len: int = 0
    kernel_options: str = ""

    def __init__(self, attention: AttentionConfig | None = None, *, masks: str = "carry", causal: str = "mask",
                 gqa: str = "repeat", skip=(), min_seq_len: int = 0, kernel_options="", **attention_options):
        unknown = sorted(set(attention_options) - set(ATTENTION_OPTIONS))
        if unknown:
            raise TypeError(f"BackendConfig got unknown keyword argument(s) {unknown}")
        if attention is None:
            attention = AttentionConfig()
        if not isinstance(attention, AttentionConfig):
            raise TypeError(f"attention must be a bitlower.AttentionConfig, got {type(attention).__name__}")
        check_choice("weighting", attention_options.get("weighting", attention.weighting), BACKEND_WEIGHTINGS)
        attention = dataclasses.replace(attention, **attention_options)  # AttentionConfig checks the modes
        check_choice("masks", masks, MASK_HANDLING)
        check_choice("causal", causal, CAUSAL_HANDLING)
        check_choice("gqa", gqa, GQA_HANDLING)
        for name, value in (("attention", attention), ("masks", masks), ("causal", causal), ("gqa", gqa),
                            ("skip", _patterns(skip)), ("min_seq_len", _min_seq_len(min_seq_len)),
                            ("kernel_options", _kernel_options(kernel_options))):
            object.__setattr__(self, name, value)

    @property
    def weighting(self) -> str:
        """``attention.weighting``."""
        return self.attention.weighting

    @property
    def grad_mode(self) -> str:
        """``attention.grad_mode``."""
        return self.attention.grad_mode

    @property
    def pv_quant(self) -> str:
        """``attention.pv_quant``."""
        return self.attention.pv_quant

    @property
    def ste_clip(self) -> float:
        """``attention.ste_clip``."""
        return self.attention.ste_clip

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The option keys ``torch.compile(..., options=...)`` takes for bitlower: the flat
        ``AttentionConfig`` fields, then the fields of this class (``attention`` among them)."""
        return ATTENTION_OPTIONS + tuple(f.name for f in fields(cls))

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
        """A copy with ``changes`` applied (and validated); flat attention keys change ``attention``."""
        return dataclasses.replace(self, **changes)


def _patterns(skip) -> tuple[str, ...]:
    """``skip`` as a tuple of ``fnmatch`` patterns (one string is one pattern)."""
    if not isinstance(skip, (str, list, tuple, set, frozenset)):
        raise ValueError(f"skip must be a module-path pattern or a sequence of them (strings), got {skip!r}")
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"skip must be module-path patterns (strings), got {skip!r}")
    return patterns


def _min_seq_len(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"min_seq_len must be a non-negative int, got {value!r}")
    return value


def _kernel_options(value) -> str:
    """``value`` (a ``KernelOptions`` or its encoded string) as the operator's argument, checked by decoding."""
    from bitlower.codegen.plan import KernelOptions

    if not isinstance(value, (str, KernelOptions)):
        raise ValueError(f"kernel_options must be a bitlower.codegen.KernelOptions or its encode() string, "
                         f"got {value!r}")
    try:
        options = value if isinstance(value, KernelOptions) else KernelOptions.decode(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"kernel_options {value!r}: {err}") from None
    if options.counted:
        raise ValueError("kernel_options: 'counted' is the backend's own mark, not an option")
    return options.encode()
