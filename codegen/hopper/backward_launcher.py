"""Host side of the Hopper Gluon backward (hamming, stopgrad, ste): sign tiles, bias operands, descriptors, assembly.

Contract of ``codegen.backward.backward`` (same saved inputs, same gradients, same shapes and dtypes), for
the calls ``backward_support.hopper_backward_unsupported`` accepts, with ``out`` required. Steps:

1. ``delta_i = dO_i . O_i`` (``codegen.backward._row_dots``; only when a dS reduction is wanted).
2. The packed sign bits become float8 e4m3 (ste: bf16) ``+-1.0`` tensors ``(B*H, L, DP)`` (``sign_unpack``, q's
   and k's in one launch, ``DP = configs.padded_dim(D)``; TMA reads the first ``KC * NKC`` channels,
   ``config.sign_chunks``).
3. ``kernel_bwd._binary_attn_bwd_sm90_kernel`` over ``(cdiv(M, BLOCK_M), B*H)``: dV, db, the mean_abs chain's
   per-key totals, da (atomics), the head bias's per-key sums, the dense/table bias gradient (atomics), ste's
   raw dK sums; ste's raw dQ sums from ``kernel_bwd_q._binary_attn_bwd_q_sm90_kernel`` over ``(cdiv(N, 64), B*H)``.
4. ste's ``raw * clip * (scale a)`` and the mean_abs chain ``sum_i da_i sgn(q) / (N D)`` in one pass, dq and
   dk in one launch (``input_grads.input_grads``), and the bias gradient's final shape.

The Gluon kernel is launched directly (``kernel[grid](...)``), not through ``torch.library.wrap_triton``:
under ``torch.compile`` it must run inside an opaque operator (``backward_op``, ``bitlower::hopper_bwd``).
"""
from __future__ import annotations

import torch
import triton

from bitlower.output_layout import new_output
from bitlower.relpos import dense_to_table_grad

from .. import direct_launch
from ..backward import _row_dots
from ..forward_v2 import dense_table
from ..operands import bias_operand
from ..plan import CallFacts
from ..sign_unpack import unpack_sign_pair
from ..tiles import BIAS_CODES, LOG2E
from .backward_support import HopperBackwardConfig, shape_reason, hopper_backward_config
from .config import sign_chunks, value_width
from .input_grads import GradSide, input_grads
from .launcher import _descriptor
from .support import tma_readable

Q_BLOCK_N, Q_BLOCK_M, Q_STAGES = 64, 32, 2  # the ste query kernel: 64 queries (one warpgroup) x 32-key tiles


def sign_tiles(bits: torch.Tensor, dim: int, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """``(B*H, L, DP)`` ``+-1.0`` signs in ``dtype`` (float8 e4m3 or bf16; 0 past ``dim``) of packed
    ``(B, H, L, 1, W)`` bits (``sign_unpack``; ``backward_operands`` unpacks q's and k's in one launch)."""
    return _flat(unpack_sign_pair(bits, None, dim, dtype)[0])


def _flat(signs: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, DP)`` -> ``(B*H, L, DP)`` (a view), the TMA descriptors' 3-d form."""
    return signs.reshape(-1, *signs.shape[2:])


def _launch(kernel, grid, args, kwargs) -> None:
    """Run one Gluon launch (``benchmarks/hopper_build.py`` replaces this to record launches)."""
    direct_launch.launch(kernel, grid, args, kwargs)


def _wants(spec, needs) -> dict:
    """The kernel's output flags for ``needs`` ``(q, k, v, a_in, b_in, bias)`` (``backward._plan``'s rules)."""
    chain = spec.mean_abs_chain  # mean_abs and not stopgrad: sum_i da_i reaches q, sum_j db_j reaches k
    bias_grad = needs[5] and spec.bias_kind in ("head", "dense", "table")
    return dict(NEED_DV=bool(needs[2]), NEED_DB=bool(needs[4] or (chain and needs[1])),
                NEED_DA_COLS=bool(chain and needs[0]), NEED_DA_ROWS=bool(needs[3]),
                HEAD_DBIAS=bool(bias_grad and spec.bias_kind == "head"),
                DENSE_DBIAS=bool(bias_grad and spec.bias_kind != "head"),
                NEED_DK=bool(spec.grad_mode == "ste" and needs[1]))


def _bias_operands(bias, spec, shape4, dense_grad: bool):
    """``(code, tensor, strides, grad_buffer, grad_strides)`` of the bias as the kernel reads and writes it.

    A table bias is read as a dense ``(1, H, N, N)`` copy (``forward_v2.dense_table``) and its gradient
    gathered from a dense ``(1, H, N, N)`` float32 buffer (``relpos.dense_to_table_grad``).
    """
    zeros = (0, 0, 0, 0)
    if spec.bias_kind == "table":
        dense = dense_table(bias, spec.grid, shape4[2])  # (1, H, N, N)
        view = dense.expand(shape4)  # (B, H, N, M), stride 0 on B
        code, tensor, strides = BIAS_CODES["dense"], view, tuple(view.stride())
        grad_shape = dense.shape
    else:
        operand = bias_operand(bias, spec, shape4)
        code, tensor, strides = operand.code, operand.tensor, operand.strides
        grad_shape = bias.shape if bias is not None else None
    if not dense_grad:
        return code, tensor, strides, None, zeros
    buf = torch.zeros(grad_shape, dtype=torch.float32, device=bias.device)
    return code, tensor, strides, buf, tuple(buf.expand(shape4).stride())


def launch_hopper_backward(grad_out, v, bias, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, head_dim,
                           needs, *, out, config: HopperBackwardConfig | None = None):
    """Fused backward on sm_90 through the Gluon kernels (contract of ``codegen.backward``), eagerly: the three
    stages ``backward_operands``, ``launch_backward_kernels``, ``finish_gradients`` in a row.

    Args:
        grad_out: ``(B, H, N, Dv)``; v, bias: the forward's inputs; lse, qbits, kbits, qclip, kclip, a, b,
            row_state: what the forward saved (qclip / kclip: ste's clip masks).
        spec: the call's ``CallSpec`` (``hopper_backward_unsupported`` accepted it); head_dim: ``D``.
        needs: six bools for ``(q, k, v, a_in, b_in, bias)``.
        out: the forward's output ``(B, H, N, Dv)`` (``delta_i = dO_i . O_i``).
        config: a ``HopperBackwardConfig`` overriding ``hopper_backward_config`` (sweeps).

    Returns:
        ``(dq, dk, dv, da, db, dbias)``, None where not needed or the mode gives none.

    Raises:
        ValueError: ``out`` is None, or the shapes are outside what the kernels take (``shape_reason``).
    """
    cfg = config or backward_config(lse, v, head_dim, spec)
    check_call(grad_out, v, bias, lse, head_dim, spec)
    operands = backward_operands(grad_out, v, bias, lse, qbits, kbits, a, row_state, spec, head_dim, needs, out, cfg)
    raw = launch_backward_kernels(*operands, v, bias, row_state, a, b, spec, head_dim, needs, cfg)
    return finish_gradients(raw, a, b, qclip, kclip, qbits, kbits, bias, spec, head_dim, needs, v)


def backward_config(lse, v, head_dim: int, spec) -> HopperBackwardConfig:
    """The tile table's config of a call (``hopper_backward_config``)."""
    return hopper_backward_config(lse.shape[2], head_dim, v.shape[-1], spec.grad_mode)


def check_call(grad_out, v, bias, lse, head_dim: int, spec) -> None:
    """Raises ValueError where the kernels cannot take the shapes (a caller that skipped the plan): a wrong
    gradient is never returned."""
    bsz, heads, n = lse.shape
    tensors = [t for t in (grad_out, v, bias) if t is not None]
    facts = CallFacts(bsz, heads, n, v.shape[2], head_dim, v.shape[-1], v.dtype, max(t.numel() for t in tensors),
                      any(t.numel() == 0 for t in tensors))
    reason = shape_reason(facts, spec)
    if reason:
        raise ValueError(reason)


def backward_operands(grad_out, v, bias, lse, qbits, kbits, a, row_state, spec, head_dim, needs, out, cfg):
    """Stage 1, traceable (tl.dot launches through ``codegen.launch`` and PyTorch ops: under ``torch.compile`` they
    run in Inductor's graph, before the opaque operator): ``(go, q_signs, k_signs, delta, rows)``.

    go: grad_out in v's dtype; q_signs / k_signs: ``sign_tiles`` (float8, ste: bf16); delta ``(B, H, N)``
    (``lse`` itself where no dS reduction is wanted); rows: ``staged_query_rows`` where ``cfg.staged_rows``,
    else None.

    Raises:
        ValueError: ``out`` is None.
    """
    if out is None:
        raise ValueError("launch_hopper_backward needs out, the forward's output (delta_i = dO_i . O_i)")
    wants = _wants(spec, needs)
    ste = spec.grad_mode == "ste"  # the sign products take bf16 +-1 operands (S too), else float8
    need_ds = any(flag for key, flag in wants.items() if key != "NEED_DV") or (ste and needs[0])  # dq: dS too
    delta = _row_dots(out, grad_out, lse) if need_ds else lse  # (B, H, N) float32
    sign_dtype = torch.bfloat16 if ste else torch.float8_e4m3fn
    q_signs, k_signs = (_flat(t) for t in unpack_sign_pair(qbits, kbits, head_dim, sign_dtype))
    go = grad_out if grad_out.dtype == v.dtype else grad_out.to(v.dtype)
    rows = None
    if cfg.staged_rows:
        shift = bias.to(torch.float32).reshape(-1) * LOG2E.value if spec.bias_kind == "head" else None  # (H,)
        rows = staged_query_rows(row_state, delta, a, shift, cfg.block_n)
    return go, q_signs, k_signs, delta, rows


def launch_backward_kernels(go, q_signs, k_signs, delta, rows, v, bias, row_state, a, b, spec, head_dim, needs, cfg):
    """Stage 2, real tensors only (TMA descriptors; under ``torch.compile`` the opaque ``bitlower::hopper_bwd``): the
    Gluon launches. Returns the raw outputs ``(dv, db, da_cols, da, ds_keys, dk_raw, dq_raw, gbias)``
    (``raw_shapes``), None where not made."""
    bsz, heads, n = delta.shape
    m, dim_v = v.shape[2], v.shape[-1]
    wants = _wants(spec, needs)
    dev = v.device
    f32 = dict(dtype=torch.float32, device=dev)
    code, beta, strides, gbias, gstrides = _bias_operands(bias, spec, (bsz, heads, n, m), wants["DENSE_DBIAS"])
    dv = new_output(bsz, heads, m, dim_v, like=v) if wants["NEED_DV"] else None  # (B, M, H, Dv) storage
    db = torch.empty(bsz, heads, m, 1, **f32) if wants["NEED_DB"] else None
    da_cols = torch.empty(bsz, heads, m, 1, **f32) if wants["NEED_DA_COLS"] else None
    da = torch.zeros(bsz, heads, n, 1, **f32) if wants["NEED_DA_ROWS"] else None  # atomics add into it
    ds_keys = torch.empty(bsz, heads, m, **f32) if wants["HEAD_DBIAS"] else None
    dk_raw = torch.empty(bsz, heads, m, head_dim, **f32) if wants["NEED_DK"] else None
    kc, nkc = sign_chunks(head_dim)
    dvp = value_width(dim_v)
    go = tma_readable(go)
    k_desc = _descriptor(k_signs, [1, cfg.block_m, kc])
    q_desc = _descriptor(q_signs, [1, cfg.block_n, kc])
    vv = tma_readable(v)
    v_desc = _descriptor(vv, [1, 1, cfg.block_m, dvp])
    do_desc = _descriptor(go, [1, 1, cfg.block_n, dvp])
    pick = lambda t: delta if t is None else t  # noqa: E731 - an unused pointer argument
    from .kernel_bwd import _binary_attn_bwd_sm90_kernel

    rows_desc = _row_descriptor(rows, cfg.block_n) if cfg.staged_rows else do_desc  # unused unless staged_rows
    args = (k_desc, q_desc, v_desc, do_desc, rows_desc, row_state.contiguous(), delta, a.contiguous(), b.contiguous(),
            pick(beta), pick(gbias), pick(dv), pick(db), pick(da_cols), pick(da), pick(ds_keys), pick(dk_raw),
            *strides, *gstrides, *(dv.stride()[:3] if dv is not None else (0, 0, 0)), heads, n, m,
            float(spec.scale), spec.scale * LOG2E.value)
    kwargs = dict(D=head_dim, DV=dim_v, NKC=nkc, STAGES=cfg.stages, BIAS=code, EVEN_M=m % cfg.block_m == 0,
                  MEAN_ABS=spec.weighting == "mean_abs", STAGED_ROWS=cfg.staged_rows, num_warps=cfg.num_warps,
                  **wants)
    if any(wants.values()):  # else only dq/dk of a non-mean_abs hamming call (zeros) or nothing is wanted
        _launch(_binary_attn_bwd_sm90_kernel, (triton.cdiv(m, cfg.block_m), bsz * heads), args, kwargs)
    dq_raw = None
    if spec.grad_mode == "ste" and needs[0]:
        dq_raw = _launch_queries(q_signs, k_signs, go, vv, row_state, delta, a, b, beta, strides, code, spec,
                                 (bsz, heads, n, m, head_dim, dvp), kc)
    return dv, db, da_cols, da, ds_keys, dk_raw, dq_raw, gbias


def raw_shapes(grad_out, v, bias, spec, head_dim: int, needs) -> list:
    """``(shape, dtype)`` of each raw output of ``launch_backward_kernels``, None where it makes none; all are
    contiguous but dv (the first), which is in ``output_layout.new_output``'s storage."""
    bsz, heads, n = grad_out.shape[:3]
    m, f32 = v.shape[2], torch.float32
    wants = _wants(spec, needs)
    grad_bias = None
    if wants["DENSE_DBIAS"]:
        grad_bias = ((1, heads, n, n) if spec.bias_kind == "table" else tuple(bias.shape), f32)
    made = [(wants["NEED_DV"], ((bsz, heads, m, v.shape[-1]), v.dtype)),
            (wants["NEED_DB"], ((bsz, heads, m, 1), f32)), (wants["NEED_DA_COLS"], ((bsz, heads, m, 1), f32)),
            (wants["NEED_DA_ROWS"], ((bsz, heads, n, 1), f32)), (wants["HEAD_DBIAS"], ((bsz, heads, m), f32)),
            (wants["NEED_DK"], ((bsz, heads, m, head_dim), f32)),
            (spec.grad_mode == "ste" and needs[0], ((bsz, heads, n, head_dim), f32)),
            (grad_bias is not None, grad_bias)]
    return [shape if flag else None for flag, shape in made]


def finish_gradients(raw, a, b, qclip, kclip, qbits, kbits, bias, spec, head_dim, needs, like):
    """Stage 3, traceable: ``(dq, dk, dv, da, db, dbias)`` from the raw outputs (``input_grads.input_grads``: dq and
    dk in ``like``'s (v's) dtype and the output layout; the bias gradient's final shape), None where not needed or
    the mode gives none."""
    dv, db, da_cols, da, ds_keys, dk_raw, dq_raw, gbias = raw
    dq, dk = input_grads(GradSide(dq_raw, a, qclip, da_cols, qbits, needs[0]),
                         GradSide(dk_raw, b, kclip, db, kbits, needs[1]), head_dim, spec, like)
    return dq, dk, dv, da if needs[3] else None, db if needs[4] else None, _finish_bias_grad(bias, spec, gbias,
                                                                                              ds_keys)


FLT_MAX = torch.finfo(torch.float32).max
ROW_FIELDS = 4  # staged rows per query: m2, l2, delta, a (``kernel_bwd.ROW_FIELDS``)


def _floored(x: torch.Tensor) -> torch.Tensor:
    """``fmax(x, -FLT_MAX)`` (NaN and -inf -> -FLT_MAX) without a device scalar: a host-to-device copy of one
    would break CUDA-graph capture."""
    return x.nan_to_num(nan=-FLT_MAX, posinf=float("inf"), neginf=-FLT_MAX)


def staged_query_rows(row_state, delta, a, head_shift2, block_n: int) -> torch.Tensor:
    """``(B*H*4, NP)`` float32, per (batch*head) the rows m2, l2, delta, a of every query, NP = N padded to
    ``block_n``: what ``kernel_bwd._query_rows`` loads per tile, its clamps applied (``fmax``: a NaN becomes
    -FLT_MAX as under the kernel's ``maximum``), m2 less a head bias's shift ``head_shift2`` ``(H,)`` (or None);
    padded queries read m2 = +inf (p = 0) and zeros."""
    bsz, heads, n, _ = row_state.shape
    padded = -(-n // block_n) * block_n
    rows = torch.zeros(bsz * heads, ROW_FIELDS, padded, dtype=torch.float32, device=row_state.device)
    m2 = row_state[..., 0]
    if head_shift2 is not None:
        m2 = m2 - head_shift2[None, :, None]
    rows[:, 0, :n] = _floored(m2).reshape(bsz * heads, n)
    rows[:, 0, n:] = float("inf")
    rows[:, 1, :n] = _floored(row_state[..., 1]).reshape(bsz * heads, n)
    rows[:, 2, :n] = delta.reshape(bsz * heads, n)
    rows[:, 3, :n] = a.reshape(bsz * heads, n)
    return rows.view(bsz * heads * ROW_FIELDS, padded)


def _row_descriptor(rows: torch.Tensor, block_n: int):
    """A TMA descriptor of ``staged_query_rows``' rows: ``[4, block_n]`` boxes (a query tile's four fields) into an
    unswizzled layout (the kernel reads each field as a vector)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    return TensorDescriptor(rows, list(rows.shape), list(rows.stride()), [ROW_FIELDS, block_n], layout)


def _launch_queries(q_signs, k_signs, go, vv, row_state, delta, a, b, beta, strides, code, spec, dims, kc):
    """ste: ``kernel_bwd_q._binary_attn_bwd_q_sm90_kernel`` over ``(cdiv(N, 64), B*H)``; the raw dq sums."""
    bsz, heads, n, m, head_dim, dvp = dims
    from .kernel_bwd_q import _binary_attn_bwd_q_sm90_kernel

    dq_raw = torch.empty(bsz, heads, n, head_dim, dtype=torch.float32, device=go.device)
    q_desc = _descriptor(q_signs, [1, Q_BLOCK_N, kc])
    k_desc = _descriptor(k_signs, [1, Q_BLOCK_M, kc])
    do_desc = _descriptor(go, [1, 1, Q_BLOCK_N, dvp])
    v_desc = _descriptor(vv, [1, 1, Q_BLOCK_M, dvp])
    args = (q_desc, k_desc, do_desc, v_desc, row_state.contiguous(), delta, a.contiguous(), b.contiguous(),
            delta if beta is None else beta, dq_raw, *strides[:4], heads, n, m, spec.scale * LOG2E.value)
    kwargs = dict(D=head_dim, STAGES=Q_STAGES, BIAS=code, EVEN_M=m % Q_BLOCK_M == 0,
                  MEAN_ABS=spec.weighting == "mean_abs", num_warps=Q_BLOCK_N // 16)
    _launch(_binary_attn_bwd_q_sm90_kernel, (triton.cdiv(n, Q_BLOCK_N), bsz * heads), args, kwargs)
    return dq_raw


def _finish_bias_grad(bias, spec, gbias, ds_keys):
    """The bias gradient in the bias's shape and dtype (None for none/mask or when not wanted)."""
    if ds_keys is not None:
        return ds_keys.sum(dim=(0, 2)).to(bias.dtype)  # (H,)
    if gbias is None:
        return None
    if spec.bias_kind == "table":
        return dense_to_table_grad(gbias[0], spec.grid, bias.shape[0]).to(bias.dtype)  # (rows, H)
    return gbias.to(bias.dtype)
