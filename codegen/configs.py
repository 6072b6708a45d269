"""Launch configurations: tile sizes, warps and pipeline depth per shape (a measured table).

``codegen.plan`` is the only caller: it picks the table (or, under the Triton interpreter, one
small config with float32 dots: the interpreter's bf16 dot is not exact) and applies overrides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tiles import DOT_BF16 as _BF16, DOT_FP16 as _FP16, DOT_FP32 as _FP32

# v2 table bias: materialise the dense (H, N, M) bias in the table's dtype when it has at most this
# many elements, else gather in-kernel. H100: dense beats the gather at every measured size
# (N 1680 H 6: 0.332 vs 1.472 ms; N 4096 H 16 = 2**28 elements: 2.49 vs 5.70 ms); the cap bounds the
# transient tensor at 512 MiB of bf16.
DENSE_TABLE_MAX_ELEMENTS = 2**28
# Static row maximum guard, in log2 units: the kernel uses the bound when 2 * bound <= LIMIT, so
# the largest p of a row is >= 2**-LIMIT (times 2**P_OFFSET). float32/bfloat16 P keep full
# precision down to 2**-126; float16 P is normal down to 2**-14 and holds up to 65504 = 2**16,
# so it shifts p up by 2**15 and allows a 2**-24 spread (the largest p stays >= 2**-9).
STATIC_LIMIT = {torch.float16: (24.0, 15.0)}
DEFAULT_LIMIT = (100.0, 0.0)
PROLOGUE_ROWS = 64  # rows per stats-pass (and sign-unpack) program (memory-bound: 64 x D elements in flight)
PROLOGUE_WARPS = 4


MIN_PADDED_DIM = 64  # the default floor of padded_dim
NARROW_PADDED_DIM = 32  # the int8 tensor-core dot's smallest K (KernelOptions(min_width=32))


def padded_dim(dim: int, floor: int = MIN_PADDED_DIM) -> int:
    """Next power of two >= dim, at least ``floor``: the width of the tl.dot kernels' sign and value tiles.

    The floor is 64: on the H200 (Triton 3.6) the calls with 32-channel sign tiles (D 17-32) faulted in
    the backward and memcheck found out-of-range shared accesses at the forward's int8 dot, while every
    64-wide call ran clean (benchmarks/kernel_notes.md, session 7). ``floor=32`` (the int8 dot's
    smallest K) stays reachable as ``KernelOptions(min_width=32)`` for the sanitizer comparison.
    """
    return max(floor, 1 << (dim - 1).bit_length())


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of an attention kernel."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int

    @property
    def text(self) -> str:
        """``"BNxBMxWxS"``, the form ``KernelOptions`` carries."""
        return f"{self.block_n}x{self.block_m}x{self.num_warps}x{self.num_stages}"


INTERPRETER_CONFIG = TileConfig(16, 16, 1, 1)


FP32_CONFIG = TileConfig(32, 32, 4, 1)  # float32 operands: 2x the shared memory of bf16 tiles


def forward_table(n: int, m: int, dim_p: int, dim_vp: int, dtype: torch.dtype, loaded_bias: bool) -> TileConfig:
    """v1 forward tiles per shape (H100 table; see benchmarks/kernel_notes.md).

    ``loaded_bias``: a table, dense or mask bias tile is loaded beside the K tile.
    """
    if dtype == torch.float32:
        return FP32_CONFIG
    if loaded_bias and max(dim_p, dim_vp) >= 128:
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


def forward_v2_table(n: int, dim_p: int, dim_vp: int, dtype: torch.dtype, loaded_bias: bool) -> TileConfig:
    """v2 forward tiles: 128x64 / 4 warps / 3 stages (the round-2 sweep: best at N 1024 and 4096).

    D >= 128 takes 8 warps (a 128 x 128 float32 accumulator is 128 registers/thread in 4 warps) and a
    loaded bias tile at D >= 128 halves the query tile (shared memory).
    """
    if dtype == torch.float32:
        return FP32_CONFIG
    widest = max(dim_p, dim_vp)
    if widest >= 256 or (loaded_bias and widest >= 128):
        return TileConfig(64, 64, 4, 2)
    if widest >= 128:
        return TileConfig(128, 64, 8, 3)
    return TileConfig(128, 64, 4, 3)


def backward_table(n: int, m: int, dim_p: int, dim_vp: int, dtype: torch.dtype) -> TileConfig:
    """Backward tiles per shape; ``block_n`` query rows, ``block_m`` key rows per program side."""
    if dtype == torch.float32:
        return FP32_CONFIG
    if max(dim_p, dim_vp) >= 256:
        return TileConfig(32, 32, 4, 1)
    # H100 sweep (bf16, hamming backward, ms): 64x64 with 4 warps wins everywhere measured
    # (N 4096 D 64: 2.81 with 3 stages vs 3.02 with 2; D 128 and N <= 256: 2 stages best).
    if max(dim_p, dim_vp) >= 128 or n <= 512:
        return TileConfig(64, 64, 4, 2)
    return TileConfig(64, 64, 4, 3)


DOT_FP32, DOT_FP16, DOT_BF16 = _FP32.value, _FP16.value, _BF16.value  # tiles.fdot's operand-type codes
