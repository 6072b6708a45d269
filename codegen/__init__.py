"""Triton kernels for binary attention (CUDA path of the ``bitlower`` operators)."""
from __future__ import annotations


def unsupported_reason(q, k, v, a, b, bias, spec) -> str | None:
    """Why the fused kernels cannot run this call, or None when they can."""
    return "fused kernels are not built in this version"
