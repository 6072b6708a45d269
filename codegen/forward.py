"""Launcher of the binary-attention forward: prologue, strides, grid and config choice."""
from __future__ import annotations

import torch
import triton

from . import configs
from .configs import DEFAULT_LIMIT, FORWARD_VARIANTS, STATIC_LIMIT, dot_kind, forward_config, padded_dim
from .forward_kernel import _binary_attn_fwd_kernel
from .forward_v2 import forward_v2
from .operands import bias_operand, value_scales
from .prologue import sign_pack
from .tiles import LOG2E


def k_signs_from_bits(n: int, m: int) -> bool:
    """Whether the forward unpacks K's signs from the packed bits (else an int8 sign tensor).

    The bits are 1/8 of the int8 tensor's bytes but cost shift/and work per key tile and query
    block; see benchmarks/kernel_notes.md for the measurement behind the choice.
    """
    return False


def forward(q, k, v, a, b, bias, spec, *, k_from_bits: bool | None = None, static_max: bool = True,
            config=None, variant: str | None = None):
    """Fused forward with the contract of ``bitlower.reference.forward``.

    ``variant`` (None: ``configs.FORWARD_VARIANT``; "auto": ``configs.auto_forward_variant``) picks "v1" (this module's prologue + kernel) or
    "v2" (``forward_v2``: signs from the floating q/k in the main kernel, no int8 sign tensor; bits
    only when ``spec.save_bits``). v2 covers ``pv_quant == "none"``; other calls run v1.

    Args:
        q, k, v: ``(B, H, N, D)``, ``(B, H, M, D)``, ``(B, H, M, Dv)``; any strides; one dtype
            among float16/bfloat16/float32 (``codegen.unsupported_reason`` checks the call).
        a, b: ``(B, H, N)`` / ``(B, H, M)`` scalars for ``token`` weighting, else None.
        bias: the bias of ``spec.bias_kind``.
        spec: the call's ``CallSpec``.
        k_from_bits: force the K sign source (tests and benchmarks); None picks per shape.
        static_max: allow the static row maximum (False forces the online softmax).
        config: a ``TileConfig`` overriding the table (tuning sweeps).
        variant: "auto", "v1" or "v2"; None for ``configs.FORWARD_VARIANT``.

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff)`` as the reference.

    Raises:
        ValueError: an unknown ``variant``.
    """
    variant = configs.FORWARD_VARIANT if variant is None else variant  # read per call: switchable
    if variant not in FORWARD_VARIANTS:
        raise ValueError(f"variant must be one of {FORWARD_VARIANTS}, got {variant!r}")
    if variant == "auto":
        variant = configs.auto_forward_variant(spec, q.shape[-1])
    if variant == "v2" and spec.pv_quant == "none":
        return forward_v2(q, k, v, a, b, bias, spec, static_max=static_max, config=config)
    bsz, heads, n, dim = q.shape
    m, dim_v = k.shape[2], v.shape[-1]
    if k_from_bits is None:
        k_from_bits = k_signs_from_bits(n, m)
    qbits, qclip, q_signs, a_eff, q_sums = sign_pack(q, a, spec, signs=True)
    kbits, kclip, k_signs, b_eff, k_sums = sign_pack(k, b, spec, signs=not k_from_bits)
    ks = kbits if k_from_bits else k_signs
    out = torch.empty(bsz, heads, n, dim_v, dtype=v.dtype, device=v.device)
    lse = torch.empty(bsz, heads, n, dtype=torch.float32, device=q.device)
    beta = bias_operand(bias, spec, (bsz, heads, n, m))
    cfg = config or forward_config(n, m, padded_dim(dim), padded_dim(dim_v), v.dtype, beta.code)
    pv_int8 = spec.pv_quant == "int8"
    vscale, vstep = value_scales(v) if pv_int8 else (lse, lse)
    dp, dvp = padded_dim(dim), padded_dim(dim_v)
    limit, offset = STATIC_LIMIT.get(v.dtype, DEFAULT_LIMIT)
    grid = (triton.cdiv(n, cfg.block_n), bsz * heads)
    torch.library.wrap_triton(_binary_attn_fwd_kernel)[grid](
        q_signs, ks, v, out, lse, a_eff, b_eff, q_sums, k_sums,
        beta.tensor if beta.tensor is not None else lse, vscale, vstep,
        n * q_signs.shape[-1], q_signs.shape[-1], m * ks.shape[-1], ks.shape[-1],
        *v.stride(), *beta.strides,
        heads, n, m, spec.scale * LOG2E, 1.0 / (n * dim), 1.0 / (m * dim), beta.rows, *beta.grid,
        D=dim, DP=dp, DV=dim_v, DVP=dvp, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m,
        MEAN_ABS=spec.weighting == "mean_abs", BIAS=beta.code, HAS_PREFIX=beta.has_prefix,
        STATIC_MAX=static_max and spec.bias_kind != "dense", LIMIT=limit, P_OFFSET=offset,
        PV_INT8=pv_int8, K_FROM_BITS=k_from_bits, DOT=dot_kind(v.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff
