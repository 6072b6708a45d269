"""Which calls the fused kernels cover, as the operators ask it: ``codegen.plan`` on the op's tensors.

``forward_plan_for`` / ``backward_plan_for`` give the plan the launchers then run (or the reason, a str);
``unsupported_reason`` / ``unsupported_backward_reason`` give only the reason (None when covered).
"""
from __future__ import annotations

from .plan import BackwardPlan, CallFacts, DeviceFacts, ForwardPlan, KernelOptions, plan_backward, plan_forward


def forward_plan_for(q, k, v, a, b, bias, spec, options: KernelOptions = KernelOptions()) -> ForwardPlan | str:
    """The forward plan of this call, or why the kernels cannot run it (tensors may be fake)."""
    if not q.is_cuda:
        return "codegen kernels need a CUDA tensor"
    return plan_forward(CallFacts.of(q, k, v, bias), spec, DeviceFacts.of(q.device), options)


def backward_plan_for(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec,
                      options: KernelOptions = KernelOptions(), head_dim: int | None = None) -> BackwardPlan | str:
    """The backward plan of this call, or why the kernels cannot run it (tensors may be fake).

    ``head_dim``: D (the backward operator's argument); None takes the packed width ``32 W``.
    """
    if not grad_out.is_cuda:
        return "codegen kernels need a CUDA tensor"
    if qbits.shape[3] != 1:
        return "codegen kernels take one sign plane"
    words = int(qbits.shape[-1])
    if words > 8:
        return f"codegen kernels need D <= 256, got {words} packed words"
    bsz, heads, n = (int(x) for x in grad_out.shape[:3])
    dim = 32 * words if head_dim is None else int(head_dim)
    tensors = (grad_out, v) + ((bias,) if bias is not None else ())
    call = CallFacts(bsz, heads, n, int(kbits.shape[2]), dim, int(v.shape[-1]), grad_out.dtype,
                     max(int(t.numel()) for t in tensors), any(int(t.numel()) == 0 for t in tensors))
    return plan_backward(call, spec, DeviceFacts.of(grad_out.device), options)


def unsupported_reason(*args, **kwargs) -> str | None:
    """Why the fused forward cannot run this call, or None when it can (``forward_plan_for``'s arguments)."""
    plan = forward_plan_for(*args, **kwargs)
    return plan if isinstance(plan, str) else None


def unsupported_backward_reason(*args, **kwargs) -> str | None:
    """Why the fused backward cannot run this call, or None when it can (``backward_plan_for``'s arguments)."""
    plan = backward_plan_for(*args, **kwargs)
    return plan if isinstance(plan, str) else None
