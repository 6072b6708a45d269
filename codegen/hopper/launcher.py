"""Host side of the Hopper Gluon forward: stats pass, bias operand, TMA descriptors, grid, config.

Same operands and outputs as the "v2" option set of ``codegen.forward.forward`` (``pv_quant == "none"``): the stats
pass (``codegen.stats.pair_stats``) writes the float8 e4m3 sign tensors (+-1.0), the mean_abs sums
or the per-token scalars and their maxima (and the packed bits when ``spec.save_bits``); this module
describes the sign tensors and v to TMA (v itself, or a contiguous copy where its strides or data
pointer do not suit TMA: ``support.tma_readable``) and launches
``kernel_sage._binary_attn_fwd_sm90_kernel``. Ask ``support.hopper_forward_unsupported`` first.

The Gluon kernel is launched directly (``kernel[grid](...)``), not through
``torch.library.wrap_triton``: under ``torch.compile`` it runs inside the opaque custom op of ``op.py``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bitlower.output_layout import new_output

from .. import direct_launch
from ..configs import DEFAULT_LIMIT, STATIC_LIMIT
from ..operands import bias_operand
from ..stats import pair_stats
from ..tiles import BIAS_CODES, LOG2E
from .config import HopperConfig, forward_sign_box, hopper_config, sign_chunks, value_split, value_width
from .support import tma_readable

GL_DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.int8: "int8",
             torch.float8_e4m3fn: "float8e4nv"}


def _launch(kernel, grid, args, kwargs) -> None:
    """Run one Gluon launch (``benchmarks/hopper_build.py`` replaces this to record launches)."""
    direct_launch.launch(kernel, grid, args, kwargs)


@functools.lru_cache(maxsize=64)
def _shared_layout(block: tuple[int, ...], dtype: torch.dtype):
    """The NVMMA shared layout of a TMA box (cached: building one costs ~10 us of host time per call)."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout.get_default_for(list(block), getattr(gl, GL_DTYPES[dtype]))


def _descriptor(tensor: torch.Tensor, block: list[int]):
    """A host TMA descriptor over ``tensor``'s own shape and strides, NVMMA-swizzled for the wgmma."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    layout = _shared_layout(tuple(block), tensor.dtype)
    return TensorDescriptor(tensor, list(tensor.shape), list(tensor.stride()), block, layout)


def _dense_beta_max(bias: torch.Tensor, heads: int) -> torch.Tensor:
    """``(H,)`` float32 max over finite ``|beta|`` per head in log2 units (-inf entries only zero p)."""
    x = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))  # (B', H', N', M'), broadcastable
    mag = torch.where(torch.isfinite(x), x.abs(), torch.zeros((), dtype=x.dtype, device=x.device))
    return (mag.to(torch.float32).amax(dim=(0, 2, 3)) * LOG2E.value).expand(heads).contiguous()  # (H,)


def table_rows_operand(table: torch.Tensor, grid: tuple[int, int, int], n: int, rows_pad: int | None = None,
                       cols_pad: int | None = None) -> torch.Tensor:
    """``(H, NP + MP + L)`` float32: per head, the row terms ``r_t`` of NP rows, the negated column terms ``-c_t`` of
    MP columns (both int32 bit patterns), then an extended table ``ext`` (log2 units) with
    ``ext[r_i - c_j] = table[index(i, j), h]``. NP = ``rows_pad`` and MP = ``cols_pad`` (default N) are at least N:
    the padding repeats token 0's terms, so every row and column a kernel tile holds gathers inside ``ext`` and
    the kernel needs no masks.

    Patch tokens: ``r = term + C``, ``c = term`` with ``term = y (2 Gw - 1) + x`` and ``C = (Gh - 1)(2 Gw - 1) + Gw - 1``,
    so ``r_i - c_j`` is ``bitlower.relpos``' patch row in ``[0, R0)``, ``R0 = (2 Gh - 1)(2 Gw - 1)``. Prefix tokens
    take terms that land in three regions past R0 holding the prefix rows: ``[R0, R0 + C]`` (prefix query: row R0),
    ``[R0 + C + 1, R0 + 2 C + 1]`` (prefix key: row R0 + 1) and ``R0 + 2 C + 2 + C`` (both: row R0 + 2). One integer
    add and one gather per score, no selects (the kernel: ``kernel_sage._scaled``). L is about 10 Gh Gw
    (160 KB per head at a 64 x 64 grid); one 64 x 64 tile reads about 2 x 64 neighbouring entries of it.
    """
    rows_pad, cols_pad = rows_pad or n, cols_pad or n
    if rows_pad < n or cols_pad < n:
        raise ValueError(f"rows_pad and cols_pad must be >= N = {n}, got {rows_pad}, {cols_pad}")
    terms, source = _cached_table_layout(tuple(grid), n, rows_pad, cols_pad, table.device)
    heads, width = table.shape[1], rows_pad + cols_pad
    operand = torch.empty(heads, width + source.numel(), dtype=torch.float32, device=table.device)
    operand[:, :width] = terms
    torch.mul(table.t().to(torch.float32).index_select(1, source), LOG2E.value, out=operand[:, width:])
    return operand


_TABLE_LAYOUTS: dict = {}  # (grid, n, rows_pad, cols_pad, device) -> _table_layout's tensors
MAX_TABLE_LAYOUTS = 64


def _cached_table_layout(grid, n: int, rows_pad: int, cols_pad: int, device: torch.device):
    """``_table_layout``, cached: the operand is then one copy and one gather per call. A layout made while a
    CUDA graph is captured is not kept (the graph's private pool may hand its memory on once the graph is gone);
    one cached before the capture is used by it."""
    key = (grid, n, rows_pad, cols_pad, device)
    if key in _TABLE_LAYOUTS:
        return _TABLE_LAYOUTS[key]
    layout = _table_layout(grid, n, rows_pad, cols_pad, device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if not capturing and len(_TABLE_LAYOUTS) < MAX_TABLE_LAYOUTS:
        _TABLE_LAYOUTS[key] = layout
    return layout


def _table_layout(grid: tuple[int, int, int], n: int, rows_pad: int, cols_pad: int, device: torch.device):
    """``(terms, source)`` of ``table_rows_operand``, which do not depend on the table's values: ``terms``
    ``(NP + MP,)`` float32 holding the int32 row terms and negated column terms, ``source`` ``(L,)`` int64 the
    table row each ``ext`` entry copies."""
    grid_h, grid_w, prefix = grid
    width = 2 * grid_w - 1
    r0, c0 = (2 * grid_h - 1) * width, (grid_h - 1) * width + grid_w - 1
    span = c0 + 1  # patch terms are in [0, span)
    t = torch.arange(max(rows_pad, cols_pad), device=device)
    t = torch.where(t < n, t, torch.zeros_like(t))  # padding: token 0's terms
    patch = (t - prefix).clamp(min=0)
    term = (patch // grid_w) * width + patch % grid_w
    is_prefix = t < prefix
    row_terms = torch.where(is_prefix, r0 + span - 1, term + c0)[:rows_pad]
    col_terms = torch.where(is_prefix, c0 - r0 - span, term)[:cols_pad]
    source = torch.full((r0 + 2 * span + c0 + 1,), r0 + 2, device=device)  # prefix -> prefix fills the tail
    source[:r0] = torch.arange(r0, device=device)
    source[r0:r0 + span] = r0  # prefix query -> patch key
    source[r0 + span:r0 + 2 * span] = r0 + 1  # patch query -> prefix key
    terms = torch.cat([row_terms, -col_terms]).to(torch.int32).view(torch.float32)  # bit patterns
    return terms, source


def hopper_bias(bias, spec, shape4, pads: tuple[int, int]):
    """``(code, tensor, strides, beta_max, static_ok)`` of the bias as the kernel reads it.

    A table bias is gathered in the kernel from ``table_rows_operand`` padded to ``pads`` (the rows and columns
    the launch's tiles cover), strides ``(0, NP + MP + L, NP, NP + MP)``: the head, then the offsets of the column
    terms and of the extended table (no ``(H, N, N)`` tensor). A caller's dense bias gets a per-head bound when it
    is shared over the batch (one pass over the bias tensor itself), else the kernel runs the running maximum
    (``static_ok`` False).
    """
    bsz, heads, n, m = shape4
    if spec.bias_kind == "table":
        rows_pad, cols_pad = pads
        rows = table_rows_operand(bias, spec.grid, n, rows_pad, cols_pad)
        beta_max = rows[:, rows_pad + cols_pad:].abs().amax(dim=1)  # (H,) max |beta2|: ext holds every table row
        return BIAS_CODES["table"], rows, (0, rows.stride(0), rows_pad, rows_pad + cols_pad), beta_max, True
    operand = bias_operand(bias, spec, shape4)
    if spec.bias_kind == "dense":
        shared = bias.numel() <= heads * n * m
        beta_max = _dense_beta_max(bias, heads) if shared else None
        return operand.code, operand.tensor, operand.strides, beta_max, shared
    return operand.code, operand.tensor, operand.strides, None, True


def launch_hopper_forward(q, k, v, a, b, bias, spec, *, static_max: bool = True,
                          config: HopperConfig | None = None):
    """Fused forward on sm_90 through the Gluon kernel (contract of ``codegen.forward.forward``, option set "v2").

    Args:
        q, k, v: ``(B, H, N, D)``, ``(B, H, M, D)``, ``(B, H, M, Dv)`` float16/bfloat16, any strides
            (v is copied where TMA cannot read it: ``support.tma_readable``).
        a, b: ``(B, H, N)`` / ``(B, H, M)`` scalars for ``token`` weighting, else None.
        bias: the bias of ``spec.bias_kind`` (none, head, dense, mask, table).
        spec: the call's ``CallSpec`` (``pv_quant == "none"``).
        static_max: allow the static row maximum (False compiles the running maximum alone).
        config: a ``HopperConfig`` overriding ``hopper_config`` (sweeps).

    Returns:
        ``(out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, row_state)`` as the reference (bits with 0 words
        unless ``spec.save_bits``).
    """
    stats = stats_pass(q, k, a, b, spec)
    out, lse, a_eff, b_eff, row_state = launch_hopper_main(*stats.main_operands(), v, bias, spec, q.shape[-1],
                                                           static_max=static_max, config=config)
    return stats.outputs(out, lse, a_eff, b_eff, row_state, spec)


@dataclass
class HopperStats:
    """The stats pass's outputs that the Gluon forward reads (``pair_stats`` with float8 signs)."""

    q_signs: torch.Tensor  # (B, H, N, DP) float8 e4m3 +-1.0, zero past D
    k_signs: torch.Tensor  # (B, H, M, DP)
    a_rows: torch.Tensor | None  # (B, H, N, 1) float32 token / none scalars, else None (mean_abs)
    b_rows: torch.Tensor | None
    q_sums: torch.Tensor | None  # (B, H) float32 sums of |q| (mean_abs), else None
    k_sums: torch.Tensor | None
    b_max: torch.Tensor | None  # (B, H) max |b_rows|, else None
    bits: tuple  # (qbits, kbits, qclip, kclip)

    def main_operands(self) -> tuple:
        """``launch_hopper_main``'s (and ``bitlower::hopper_main``'s) first seven arguments."""
        return self.q_signs, self.k_signs, self.a_rows, self.b_rows, self.q_sums, self.k_sums, self.b_max

    def outputs(self, out, lse, a_eff, b_eff, row_state, spec) -> tuple:
        """The forward's nine outputs: the kernel's, the stats pass's bits, and the row scalars (the kernel's
        for mean_abs, else the stats pass's)."""
        if spec.weighting != "mean_abs":
            a_eff, b_eff = self.a_rows, self.b_rows
        return (out, lse, *self.bits, a_eff, b_eff, row_state)


def stats_pass(q, k, a, b, spec) -> HopperStats:
    """The Gluon forward's stats pass (``stats.pair_stats``: float8 signs, |x| sums or the eff rows, bits)."""
    mean_abs = spec.weighting == "mean_abs"
    (qbits, qclip, a_rows, q_sums, _, q_signs), (kbits, kclip, b_rows, k_sums, b_max, k_signs) = pair_stats(
        q, k, a, b, spec, eff=not mean_abs, signs=True, fp8_signs=True)
    return HopperStats(q_signs, k_signs, a_rows, b_rows, q_sums, k_sums, b_max, (qbits, kbits, qclip, kclip))


def launch_hopper_main(q_signs, k_signs, a_rows, b_rows, q_sums, k_sums, b_max, v, bias, spec, dim: int, *,
                       static_max: bool = True, config: HopperConfig | None = None):
    """The Gluon kernel on the stats pass's outputs (``stats_pass``): ``(out, lse, a_eff, b_eff, row_state)``,
    a_eff / b_eff ``(B, H, L, 1)`` written by the kernel for mean_abs, 0-element tensors otherwise (the rows are
    the stats pass's ``a_rows`` / ``b_rows``, read here)."""
    bsz, heads, n, dp = q_signs.shape
    m, dim_v = k_signs.shape[2], v.shape[-1]
    mean_abs = spec.weighting == "mean_abs"
    f32 = dict(dtype=torch.float32, device=v.device)
    a_eff = torch.empty(bsz, heads, n, 1, **f32) if mean_abs else torch.empty(0, **f32)
    b_eff = torch.empty(bsz, heads, m, 1, **f32) if mean_abs else torch.empty(0, **f32)
    cfg = config or hopper_config(n, dim, dim_v)
    pads = (-(-n // cfg.rows_per_cta) * cfg.rows_per_cta, -(-m // cfg.block_m) * cfg.block_m)
    code, beta, strides, beta_max, static_ok = hopper_bias(bias, spec, (bsz, heads, n, m), pads)
    out = new_output(bsz, heads, n, dim_v, like=v)  # (B, N, H, Dv) storage, as SDPA's
    lse = torch.empty(bsz, heads, n, **f32)
    row_state = torch.empty(bsz, heads, n, 2, **f32)  # (m2, log2 l) per row
    v = tma_readable(v)
    # structure (b) keeps the 32-channel boxes: the single box is GPU-tested under structure (a) only (session 15)
    kc, nkc = sign_chunks(dim) if cfg.consumers else forward_sign_box(dim)
    q_desc = _descriptor(q_signs.view(bsz * heads, n, dp), [1, cfg.block_n, kc])
    k_desc = _descriptor(k_signs.view(bsz * heads, m, dp), [1, cfg.block_m, kc])
    # structure (a) splits Dv in (64, 96] into 64 + a tail; structure (b) keeps one power-of-two width
    dvp, dvt = (value_width(dim_v), 0) if cfg.consumers else value_split(dim_v)
    v_desc = _descriptor(v, [1, 1, cfg.block_m, dvp])
    vt_desc = _descriptor(v, [1, 1, cfg.block_m, dvt]) if dvt else v_desc
    limit, offset = STATIC_LIMIT.get(v.dtype, DEFAULT_LIMIT)
    pick = lambda t: lse if t is None else t  # noqa: E731 - an unused pointer argument
    args = (q_desc, k_desc, v_desc, out, lse, row_state, a_eff if mean_abs else a_rows,
            b_eff if mean_abs else b_rows, pick(q_sums), pick(k_sums), pick(b_max), pick(beta), pick(beta_max),
            *strides, heads, n, m, spec.scale * LOG2E.value, 1.0 / (n * dim), 1.0 / (m * dim))
    kwargs = dict(D=dim, DV=dim_v, NKC=nkc, STAGES=cfg.stages, MEAN_ABS=mean_abs, BIAS=code,
                  BETA_MAX=beta_max is not None, STATIC_MAX=static_max and static_ok, LIMIT=limit,
                  P_OFFSET=offset, EVEN_M=m % cfg.block_m == 0, num_warps=cfg.num_warps)
    if cfg.consumers:
        from .kernel_pingpong import _binary_attn_fwd_sm90_ws_kernel as kernel

        kwargs.update(static_ok=int(kwargs.pop("STATIC_MAX")), NC=cfg.consumers, PINGPONG=cfg.pingpong,
                      ROWSUM_MMA=cfg.mma_rowsum, POLY_EVERY=cfg.poly_exp, CONSUMER_REGS=cfg.consumer_regs)
    else:
        from .kernel_sage import _binary_attn_fwd_sm90_kernel as kernel

        args = args[:3] + (vt_desc,) + args[3:]
        kwargs.update(PEEL=cfg.peel, POLY_EVERY=cfg.poly_exp, ROWSUM_MMA=cfg.mma_rowsum, DVT=dvt)
        if cfg.maxnreg:
            kwargs.update(maxnreg=cfg.maxnreg)
    _launch(kernel, (-(-n // cfg.rows_per_cta), bsz * heads), args, kwargs)
    return out, lse, a_eff, b_eff, row_state

