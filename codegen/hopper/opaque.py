"""Opaque CUDA operators for the Gluon launchers: a ``torch.library`` definition with a CUDA kernel and a
fake implementation, and nothing else.

``torch.library.custom_op`` wraps the same function in Python autograd and dispatch layers that run on
every call, under ``torch.compile`` too (the compiled graph calls the operator from its wrapper). The
Gluon operators run below ``bitlower::binary_attention_fwd`` / ``_bwd``, whose autograd formula lives
with them (``bitlower.autograd``), so they need no autograd kernel of their own: the dispatcher's C++
fallback passes their Autograd key through.
"""
from __future__ import annotations

import torch

_LIBRARY = torch.library.Library("bitlower", "FRAGMENT")  # noqa: TOR901 - plain definitions, fakes below


def cuda_operator(name: str, fn):
    """Define ``bitlower::<name>`` from ``fn``'s annotations (no mutated arguments), ``fn`` its CUDA kernel.

    Returns:
        A decorator that registers the operator's fake implementation.
    """
    _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()))
    _LIBRARY.impl(name, fn, "CUDA")
    return lambda fake: torch.library.register_fake(f"bitlower::{name}", fake, lib=_LIBRARY)
