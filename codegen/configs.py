"""Launch configurations: tile sizes, warps and pipeline depth per shape (a measured table).

Under the Triton interpreter (``TRITON_INTERPRET=1``, CI without a GPU) one small config is used
and dots run on float32 operands (the interpreter's bf16 dot is not exact).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PROLOGUE_ROWS = 64  # rows per prologue program (memory-bound: 64 x D elements in flight)
PROLOGUE_WARPS = 4


def interpreting() -> bool:
    """True when kernels run under the Triton interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def padded_dim(dim: int) -> int:
    """Next power of two >= dim, at least 32 (the int8 tensor-core dot needs K >= 32)."""
    return max(32, 1 << (dim - 1).bit_length())


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of an attention kernel."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int


INTERPRETER_CONFIG = TileConfig(16, 16, 1, 1)


FP32_CONFIG = TileConfig(32, 32, 4, 1)  # float32 operands: 2x the shared memory of bf16 tiles


def forward_config(n: int, m: int, dim_p: int, dim_vp: int, dtype: torch.dtype, bias_code: int = 0) -> TileConfig:
    """Forward tiles per shape (H100 table; see benchmarks/kernel_notes.md)."""
    if interpreting():
        return INTERPRETER_CONFIG
    if dtype == torch.float32:
        return FP32_CONFIG
    if bias_code >= 2 and max(dim_p, dim_vp) >= 128:
        # a gathered/loaded bias tile at D 128 with 128x64, 8 warps, 3 stages asked 296 KB of shared
        # memory (limit 227 KB, H100): halve the query tile and the pipeline
        return TileConfig(64, 64, 4, 2)
    if max(dim_p, dim_vp) >= 256:
        return TileConfig(64, 32, 4, 2)
    # H100 sweep (bf16, hamming, ms): N 197/256 best at 128x32, 4 warps, 4 stages (0.151 vs 0.168
    # for 128x64 at ViT-S; 0.270 vs 0.278 at DiT D 72); N >= 1024 at 128x64 (0.673 ms at N 4096 D 64,
    # 4 warps; D 128 wants 8 warps: 1.22 vs 1.78 ms).
    if n <= 512:
        return TileConfig(128, 32, 4, 4)
    if max(dim_p, dim_vp) >= 128:
        return TileConfig(128, 64, 8, 3)
    return TileConfig(128, 64, 4, 3)


def backward_config(n: int, m: int, dim_p: int, dim_vp: int, dtype: torch.dtype) -> TileConfig:
    """Backward tiles per shape; ``block_n`` query rows, ``block_m`` key rows per program side."""
    if interpreting():
        return INTERPRETER_CONFIG
    if dtype == torch.float32:
        return FP32_CONFIG
    if max(dim_p, dim_vp) >= 256:
        return TileConfig(32, 32, 4, 1)
    # H100 sweep (bf16, hamming backward, ms): 64x64 with 4 warps wins everywhere measured
    # (N 4096 D 64: 2.81 with 3 stages vs 3.02 with 2; D 128 and N <= 256: 2 stages best).
    if max(dim_p, dim_vp) >= 128 or n <= 512:
        return TileConfig(64, 64, 4, 2)
    return TileConfig(64, 64, 4, 3)


DOT_FP32, DOT_FP16, DOT_BF16 = 0, 1, 2  # constexpr codes of the floating dot operand type


def dot_kind(dtype: torch.dtype) -> int:
    """Operand type code of the floating dots for inputs of ``dtype`` (float32 under the interpreter)."""
    if interpreting() or dtype == torch.float32:
        return DOT_FP32
    return DOT_FP16 if dtype == torch.float16 else DOT_BF16
