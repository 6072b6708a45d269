"""Which calls the fused kernels cover; every other call falls back to the reference."""
from __future__ import annotations

import torch

MIN_DIM, MAX_DIM = 16, 256
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_ELEMENTS = 2**31 - 1  # kernels index with int32 offsets inside one (batch, head)
MAX_BATCH_HEADS = 65535  # grid axis 1 holds batch * heads


def _common_reason(x: torch.Tensor, spec, dims: dict[str, int], tensors) -> str | None:
    if not x.is_cuda:
        return "codegen kernels need a CUDA tensor"
    if x.dtype not in KERNEL_DTYPES:
        return f"codegen kernels take float16/bfloat16/float32, got {x.dtype}"
    if spec.weighting == "bilinear":
        return "codegen kernels do not cover bilinear (two-plane) weighting"
    for name, value in dims.items():
        if not MIN_DIM <= value <= MAX_DIM:
            return f"codegen kernels need {name} in [{MIN_DIM}, {MAX_DIM}], got {value}"
    if x.shape[0] * x.shape[1] > MAX_BATCH_HEADS:
        return f"codegen kernels take at most {MAX_BATCH_HEADS} batch*heads"
    if any(t is not None and t.numel() > MAX_ELEMENTS for t in tensors):
        return "codegen kernels index with int32: a tensor has more than 2**31 - 1 elements"
    if any(t is not None and t.numel() == 0 for t in tensors):
        return "codegen kernels need non-empty tensors"
    return None


def unsupported_reason(q, k, v, a, b, bias, spec) -> str | None:
    """Why the fused forward cannot run this call, or None when it can."""
    reason = _common_reason(q, spec, {"D": q.shape[-1], "Dv": v.shape[-1]}, (q, k, v, bias))
    if reason is None and spec.bias_kind == "table" and q.shape[2] != k.shape[2]:
        return "codegen table bias needs self-attention (N == M)"
    return reason


def unsupported_backward_reason(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, spec) -> str | None:
    """Why the fused backward cannot run this call, or None when it can."""
    reason = _common_reason(grad_out, spec, {"Dv": v.shape[-1]}, (grad_out, v, bias))
    if reason is None and qbits.shape[-1] > MAX_DIM // 32:
        return f"codegen kernels need D <= {MAX_DIM}, got {qbits.shape[-1]} packed words"
    if reason is None and qbits.shape[3] != 1:
        return "codegen kernels take one sign plane"
    return reason
