"""``binary_attention``: the public entry to the binary-attention operator."""
from __future__ import annotations

import torch

from bitlower import validation
from bitlower.ops import binary_attention_fwd
from bitlower.spec import fwd_op_args
from bitlower.weighting import BILINEAR_PLANES, bilinear_planes, stratified_planes


def binary_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    bias_kind: str | None = None,
    grid: tuple[int, int, int] | None = None,
    scale: float | None = None,
    weighting: str = "mean_abs",
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    grad_mode: str = "ste",
    pv_quant: str = "none",
    ste_clip: float = 1.0,
    generator: torch.Generator | None = None,
    planes: str = "sampled",
    kernel_options=None,
) -> torch.Tensor:
    """``softmax(scale * a_i * b_j * <sgn q_i, sgn k_j> + beta) @ v`` (SPEC §3).

    Args:
        q: ``(B, H, N, D)``, any strides, float16/bfloat16/float32/float64, ``8 <= D <= 256``.
        k: ``(B, H, M, D)``. v: ``(B, H, M, Dv)``; ``Dv`` is independent of ``D``.
        bias: additive ``beta``; its form is ``bias_kind``.
        bias_kind: ``"head"`` (shape ``(H,)``), ``"table"`` (relative-position table
            ``((2Gh-1)(2Gw-1)+3, H)`` with ``grid``), ``"dense"`` (float, broadcastable to
            ``(B, H, N, M)``), ``"mask"`` (bool, False -> -inf). Default: ``"mask"`` for a bool
            ``bias``, ``"dense"`` for a float one, ``"none"`` without one.
        grid: ``(Gh, Gw, prefix_tokens)`` for a table bias.
        scale: softmax scale, default ``D ** -0.5``.
        weighting: ``"mean_abs"``, ``"token"`` (needs ``a`` ``(B, H, N)`` and ``b`` ``(B, H, M)``),
            ``"bilinear"`` (samples two sign planes of q and k with ``generator``) or ``"none"``.
        grad_mode: ``"ste"``, ``"stopgrad"`` or ``"hamming"`` (SPEC §4).
        pv_quant: ``"none"`` or ``"int8"``.
        ste_clip: STE window ``|x| <= ste_clip``.
        generator: random source of the bilinear samples.
        planes: how the bilinear weighting draws its two sign planes: ``"sampled"`` (Bernoulli
            draws from ``generator``) or ``"stratified"`` (the fixed quantiles
            ``bitlower.weighting.STRATIFIED_QUANTILES``: deterministic, for eval and converted models).
        kernel_options: a ``bitlower.codegen.KernelOptions`` overriding the kernel plan (a forward
            kernel, tile configs); None for the measured defaults. Part of the operator call, so
            ``torch.compile`` caches key it.

    Returns:
        ``(B, H, N, Dv)`` in v's dtype.

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, a non-bool mask, a ``scale`` that
            is not a real number, a ``grid`` that is not three ints.
        ValueError: mismatched shapes, ``D`` out of range, a bias of the wrong shape, devices
            that differ, unknown mode names, ``a``/``b`` without weighting ``"token"``, ``planes``
            other than ``"sampled"`` without weighting ``"bilinear"``.

    Example:
        >>> q, k, v = (torch.randn(2, 4, 16, 32) for _ in range(3))
        >>> binary_attention(q, k, v).shape
        torch.Size([2, 4, 16, 32])
    """
    validation.check_qkv(q, k, v)
    validation.check_modes(weighting, grad_mode, pv_quant, ste_clip)
    scale = validation.check_scale(q.shape[-1] ** -0.5 if scale is None else scale)
    if bias_kind is None:
        bias_kind = "none" if bias is None else ("mask" if bias.dtype == torch.bool else "dense")
    if grid is not None:
        validation.check_grid(grid)
    validation.check_bias(bias, bias_kind, grid, q, k)
    q, k, a, b = _weighted_operands(q, k, a, b, weighting, planes, generator)
    args = fwd_op_args(
        q, k, v, a, b, bias, scale=scale, weighting=weighting, bias_kind=bias_kind,
        grid=grid if bias_kind == "table" else (), grad_mode=grad_mode, pv_quant=pv_quant, ste_clip=ste_clip,
        save_bits=needs_backward(q, k, v, a, b, bias),
        kernel_options="" if kernel_options is None else kernel_options.encode())
    return binary_attention_fwd(*args)[0]


def _weighted_operands(q, k, a, b, weighting: str, planes: str, generator):
    """``(q, k, a, b)`` as the operator takes them: bilinear sign planes ``(B, H, L, 2, D)`` with their
    weights ``(B, H, L, 2)``, the checked ``token`` scalars, or q and k with no scalars."""
    validation.check_choice("planes", planes, BILINEAR_PLANES)
    if planes != "sampled" and weighting != "bilinear":
        raise ValueError(f"planes is only taken with weighting 'bilinear', got weighting {weighting!r}")
    if weighting == "token":
        validation.check_scalars("a", a, q, q.shape[2], 1)
        validation.check_scalars("b", b, k, k.shape[2], 1)
        return q, k, a, b
    if a is not None or b is not None:
        raise ValueError(f"a and b are only taken with weighting 'token', got weighting {weighting!r}")
    if weighting != "bilinear":
        return q, k, None, None
    if planes == "stratified":
        (q, a), (k, b) = stratified_planes(q), stratified_planes(k)
    else:
        (q, a), (k, b) = bilinear_planes(q, generator), bilinear_planes(k, generator)
    return q.detach(), k.detach(), a, b


def needs_backward(*tensors) -> bool:
    """True when autograd will ask the operator for a backward (grad mode on, an input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
