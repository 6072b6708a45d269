"""Which calls the fused kernels cover, as the operators ask it: ``codegen.plan`` on the op's tensors."""
from __future__ import annotations

from .plan import CallFacts, DeviceFacts, KernelOptions, plan_backward, plan_forward


def _device_reason(x) -> str | None:
    return None if x.is_cuda else "codegen kernels need a CUDA tensor"


def unsupported_reason(q, k, v, a, b, bias, spec, options: KernelOptions = KernelOptions()) -> str | None:
    """Why the fused forward cannot run this call, or None when it can (tensors may be fake)."""
    reason = _device_reason(q)
    if reason is None:
        plan = plan_forward(CallFacts.of(q, k, v, bias), spec, DeviceFacts.of(q.device), options)
        reason = plan if isinstance(plan, str) else None
    return reason


def unsupported_backward_reason(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, spec,
                                options: KernelOptions = KernelOptions(), head_dim: int | None = None) -> str | None:
    """Why the fused backward cannot run this call, or None when it can (tensors may be fake).

    ``head_dim``: D (the backward operator's argument); None takes the packed width ``32 W``.
    """
    reason = _device_reason(grad_out)
    if reason is None and qbits.shape[3] != 1:
        reason = "codegen kernels take one sign plane"
    if reason is None:
        words = int(qbits.shape[-1])
        bsz, heads, n = (int(x) for x in grad_out.shape[:3])
        dim = 32 * words if head_dim is None else int(head_dim)
        tensors = (grad_out, v) + ((bias,) if bias is not None else ())
        call = CallFacts(bsz, heads, n, int(kbits.shape[2]), min(dim, 256), int(v.shape[-1]), grad_out.dtype,
                         max(int(t.numel()) for t in tensors), any(int(t.numel()) == 0 for t in tensors))
        plan = plan_backward(call, spec, DeviceFacts.of(grad_out.device), options)
        reason = plan if isinstance(plan, str) else None
        if reason is None and words > 8:
            reason = f"codegen kernels need D <= 256, got {words} packed words"
    return reason
