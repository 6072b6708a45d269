"""Triton kernels for binary attention (CUDA path of the ``bitlower`` operators)."""
from __future__ import annotations


def unsupported_reason(q, k, v, a, b, bias, spec) -> str | None:
    """Why the fused forward cannot run this call, or None when it can."""
    return "fused kernels are not built in this version"


def unsupported_backward_reason(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, spec) -> str | None:
    """Why the fused backward cannot run this call, or None when it can."""
    return "fused kernels are not built in this version"
