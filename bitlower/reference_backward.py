"""Exact PyTorch reference of the binary-attention backward (SPEC §4).

Recomputes the scores from the packed bits saved by the forward. With
``dP = dO V^T``, ``dS = P * (dP - rowsum(P * dP))``, ``G = scale * dS``:

    dV        = P^T dO                         (P^, V^ and the |v| <= 2 window with pv_quant)
    da_i^p    = sum_j sum_r G_ij b_j^r h^{pr}_ij
    db_j^r    = sum_i sum_p G_ij a_i^p h^{pr}_ij
    dq_i (ste) = (sum_j G_ij a_i b_j sgn k_j) * 1[|q_i| <= clip]
    dbeta     = dS reduced to the bias's shape (scatter-added into a table)

``mean_abs`` scalars depend on q: their gradient reaches q as ``sum_i da_i * sgn(q) / (N D)``
(``d|x|/dx`` taken as ``sgn(x)``, +1 at 0, the sign the Hamming form uses), in every mode
except ``stopgrad``.
"""
from __future__ import annotations

import torch

from bitlower.packing import unpack_bits, unpack_signs
from bitlower.reference import (
    V_STE_RANGE,
    compute_dtype,
    dense_bias,
    integer_scores,
    quantize_probs,
    quantize_values,
    scores,
    softmax_rows,
)
from bitlower.relpos import dense_to_table_grad
from bitlower.spec import CallSpec


def backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec: CallSpec, head_dim: int,
             needs):
    """Gradients ``(dq, dk, dv, da, db, dbias)``; an entry is None where ``needs`` says so.

    Args:
        grad_out: ``(B, H, N, Dv)``.
        v, bias: the forward's inputs.
        lse, qbits, kbits, qclip, kclip, a, b, row_state: what the forward saved (lse and row_state
            unused: P is recomputed).
        spec: the call's static description.
        head_dim: ``D``.
        needs: six booleans for ``(q, k, v, a_in, b_in, bias)``.
    """
    acc = a.dtype
    h = integer_scores(qbits, kbits, head_dim, acc)  # (B, H, N, M, P, P)
    s = scores(h, a, b, dense_bias(bias, spec, acc), spec.scale)
    probs, _ = softmax_rows(s)  # (B, H, N, M); recomputed, not exp(s - lse): see ``softmax_rows``
    do = grad_out.to(acc)
    vv = v.to(acc)
    p_used = probs
    if spec.pv_quant == "int8":
        p_used, vv = quantize_probs(probs), quantize_values(vv)
    dv = p_used.transpose(-1, -2) @ do  # (B, H, M, Dv)
    if spec.pv_quant == "int8":
        dv = dv * (v.abs() <= V_STE_RANGE).to(acc)
    dp = do @ vv.transpose(-1, -2)  # (B, H, N, M)
    ds = probs * (dp - (probs * dp).sum(-1, keepdim=True))
    g = ds * spec.scale

    da = torch.einsum("bhnm,bhnmpr,bhmr->bhnp", g, h, b)  # (B, H, N, P)
    db = torch.einsum("bhnm,bhnmpr,bhnp->bhmr", g, h, a)  # (B, H, M, P)
    dq = dk = None
    if needs[0] and spec.qk_grad:
        dq = _input_grad(g, a, b, kbits, qbits, qclip, da, spec, head_dim)
    if needs[1] and spec.qk_grad:
        dk = _input_grad(g.transpose(-1, -2), b, a, qbits, kbits, kclip, db, spec, head_dim)
    dbias = _bias_grad(ds, bias, spec) if needs[5] else None
    return (
        dq,
        dk,
        dv.to(v.dtype) if needs[2] else None,
        da if needs[3] else None,
        db if needs[4] else None,
        dbias,
    )


def _input_grad(g, own, other, other_bits, own_bits, own_clip, d_own, spec, head_dim):
    """Gradient w.r.t. q (or k, with the roles swapped): ``(B, H, L, D)``, one sign plane."""
    acc = g.dtype
    grad = torch.zeros(*own_bits.shape[:3], head_dim, dtype=acc, device=g.device)
    if spec.grad_mode == "ste":
        other_signs = unpack_signs(other_bits[:, :, :, 0], head_dim, acc)  # (B, H, L', D)
        d_sign = (g * other[..., 0].unsqueeze(-2)) @ other_signs  # (B, H, L, D)
        d_sign = d_sign * own[..., 0:1]
        clip = unpack_bits(own_clip[:, :, :, 0], head_dim).to(acc)
        grad = grad + d_sign * clip
    if spec.mean_abs_chain:
        length = own_bits.shape[2]
        total = d_own.sum(dim=(2, 3), keepdim=True)  # (B, H, 1, 1)
        own_signs = unpack_signs(own_bits[:, :, :, 0], head_dim, acc)
        grad = grad + total * own_signs / (length * head_dim)
    return grad


def _bias_grad(ds, bias, spec: CallSpec):
    """``dS`` reduced to the bias's shape; None for boolean masks."""
    kind = spec.bias_kind
    if not spec.bias_grad:
        return None
    if kind == "head":
        return ds.sum(dim=(0, 2, 3)).to(bias.dtype)  # (H,)
    if kind == "table":
        return dense_to_table_grad(ds.sum(0), spec.grid, bias.shape[0]).to(bias.dtype)
    return ds.sum_to_size(bias.shape).to(bias.dtype)
