"""Which calls the Hopper Gluon backward covers, and its tiles: pure predicates, a reason string or None.

``hopper_backward_unsupported(call, spec, device)`` is the kernel plan's question (``codegen.plan.plan_backward``
with ``KernelOptions(backward="hopper")``). It reads only ``CallFacts``, the spec, the compute capability and
the Triton version (``support.gluon_unavailable``), so it answers alike for real and fake tensors. What it
cannot see, the operands' strides and data pointers, the launcher repairs (``support.tma_readable``: grad_out
and v copied where TMA cannot read them). The forward output ``out`` must be given (``delta_i = dO_i . O_i``
comes from it): the launcher raises otherwise; ``bitlower.autograd`` always passes it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..plan import CallFacts, DeviceFacts
from . import support
from .config import sign_chunks
from .support import BIAS_KINDS, DTYPES, MAX_BATCH_HEADS, MAX_TILE_OFFSET, MIN_DIM, WEIGHTINGS

GRAD_MODES = ("hamming", "stopgrad", "ste")  # ste: D with one sign chunk (config.sign_chunks): 16-64, 97-128
STAGED_ROWS_FROM = 4096  # queries: the tile table's staged_rows (measured faster at 4096, slower at 1024)
MAX_BWD_DIM = 128  # dV (DVP/2 float32) + S, dP, P, dS (BLOCK_N/2 float32 each) within 255 registers


@dataclass(frozen=True)
class HopperBackwardConfig:
    """One launch configuration of ``kernel_bwd._binary_attn_bwd_sm90_kernel``.

    Attributes:
        block_m: keys per CTA (64: one warpgroup of 4 warps, 128: two warpgroups sharing each query tile, half
            the L2 traffic of Q signs and dO per key; the M of every wgmma).
        block_n: queries per tile (the N of the S and dP wgmma, the K of the dV wgmma).
        stages: query-sign and dO tiles in the shared-memory ring.
        staged_rows: the per-query m2, l2, delta and a of each query tile through shared memory (one TMA box on
            the tile's barrier; ``launcher.staged_query_rows``) instead of global loads per tile; SASS of the key
            loop: 274 -> 244 instructions at D 64 mean_abs, 483 -> 239 (149 -> 116 registers) with token weighting
            and a head bias (offline, session 16). Measured (H200, session 17, CUDA-graph time): 1-4 % faster at
            N 4096, 2-3 % slower at N 1024 (the tile table takes it from 4096 queries).
    """

    block_m: int = 64
    block_n: int = 32
    stages: int = 2
    staged_rows: bool = False

    def __post_init__(self):
        if self.block_m not in (64, 128):
            raise ValueError(f"block_m must be 64 or 128 (one or two warpgroups), got {self.block_m}")
        if self.block_n not in (32, 64, 128):
            raise ValueError(f"block_n must be 32, 64 or 128, got {self.block_n}")
        if not 2 <= self.stages <= 4:
            raise ValueError(f"stages must be in [2, 4], got {self.stages}")
        object.__setattr__(self, "staged_rows", bool(self.staged_rows))  # "64x32x2x1" on a command line

    @property
    def num_warps(self) -> int:
        """One warpgroup (4 warps) per 64 keys."""
        return self.block_m // 16


def hopper_backward_config(n: int, dim: int, dim_v: int, grad_mode: str = "hamming") -> HopperBackwardConfig:
    """The tile table: 64 keys x 32 queries, 2 stages, every mode and head dim.

    Measured on the H200 (session 8, ``benchmarks/attention_hopper_bwd.py --configs``, bf16 mean_abs, D 64):
    64 x 32 x 2 was the fastest or tied at every shape, hamming 0.588 / 0.667 / 0.531 / 0.442 / 1.461 ms
    at N 197 / 256 (D 72) / 1024 / 1680 / 4096 against 0.608 / 0.667 / 0.559 / 0.480 / 1.577 for 128 keys,
    and ste 3.09-3.13 ms at N 4096 against 3.84 for 128 keys x 32 queries. D 128 is unmeasured; its ptxas
    counts (64 keys: 154 registers, 3 CTAs per SM; 128 keys: 162, 1 CTA) give the same choice.
    ``staged_rows`` from 4096 queries (session 17, ``--configs 64x32x2 64x32x2x1``): hamming 1.441 -> 1.421 ms
    (8, 8, 4096, 64), 2.204 -> 2.185 (4, 16, 4096, 128), ste 3.099 -> 3.056 / 5.330 -> 5.249, token weighting
    0.845 -> 0.813 / 1.124 -> 1.096; at (32, 6, 1024, 64) 0.526 -> 0.539 (hamming), 0.216 -> 0.223 (token).
    """
    return HopperBackwardConfig(64, 32, 2, staged_rows=n >= STAGED_ROWS_FROM)


def hopper_backward_unsupported(call: CallFacts, spec, device: DeviceFacts, *,
                                triton_version: str | None = None) -> str | None:
    """Why ``backward_launcher.launch_hopper_backward`` cannot run this call, or None when it can.

    Args:
        call: the operands' ``CallFacts`` (``D`` is the backward operator's ``head_dim``).
        spec: the call's ``CallSpec``.
        device: where the tensors live and the compute capability.
        triton_version: the Triton version to judge; None takes the installed one.

    Returns:
        A reason string naming the operand and the constraint, or None.
    """
    reason = support.platform_reason(device, triton_version, "backward")
    if reason:
        return reason
    if spec.grad_mode not in GRAD_MODES:
        return f"the Hopper backward covers grad_mode {GRAD_MODES}, got {spec.grad_mode!r}"
    if call.dtype not in DTYPES:
        return f"the Hopper backward takes float16/bfloat16 grad_out and v, got {call.dtype}"
    if spec.weighting not in WEIGHTINGS:
        return f"the Hopper backward covers weighting {WEIGHTINGS}, got {spec.weighting!r}"
    if spec.pv_quant != "none":
        return f"the Hopper backward covers pv_quant 'none', got {spec.pv_quant!r}"
    if spec.bias_kind not in BIAS_KINDS:
        return f"the Hopper backward covers bias kinds {BIAS_KINDS}, got {spec.bias_kind!r}"
    return shape_reason(call, spec)


def shape_reason(call: CallFacts, spec) -> str | None:
    """The shape constraints of ``hopper_backward_unsupported`` (the launcher checks them itself)."""
    if not MIN_DIM <= call.dim <= MAX_BWD_DIM:
        return f"the Hopper backward needs D in [{MIN_DIM}, {MAX_BWD_DIM}], got {call.dim}"
    if not MIN_DIM <= call.dim_v <= MAX_BWD_DIM or call.dim_v % 8:
        return (f"the Hopper backward needs Dv in [{MIN_DIM}, {MAX_BWD_DIM}] and a multiple of 8 (16-byte rows of "
                f"v and grad_out), got {call.dim_v}")
    if spec.grad_mode == "ste" and sign_chunks(call.dim)[1] != 1:
        return (f"the Hopper backward's ste sign products take D in one power-of-two chunk (16-64, 97-128), "
                f"got {call.dim}")
    if spec.bias_kind == "table" and call.n != call.m:
        return "the Hopper backward's table bias needs self-attention (N == M)"
    if call.batch * call.heads > MAX_BATCH_HEADS:
        return f"the Hopper backward takes at most {MAX_BATCH_HEADS} batch*heads"
    if spec.bias_kind in ("dense", "mask", "table") and call.n * call.m > MAX_TILE_OFFSET:
        return "the Hopper backward indexes one head's (N, M) bias with int32: N * M must be < 2**31"
    if call.empty:
        return "the Hopper backward needs non-empty tensors"
    return None
