"""Tiles of the Hopper (sm_90) Gluon forward and the operand widths it derives from the head dims.

Chosen offline from ptxas' register counts (``benchmarks/hopper_build.py`` prints them), then measured
on the H200 (``benchmarks/attention_hopper.py --configs``, session 8): 64 x 64 x 2 beat 64 x 128 x 2 and
64 x 64 x 3 at N 4096 (D 128) and 16384 (D 64).
"""
from __future__ import annotations

from dataclasses import dataclass

INT8_K = 32  # K of one 8-bit (float8/int8) wgmma instruction: the sign operand is padded to a multiple of it
MAX_HEAD_DIM = 128  # O (DVP/2 float32) + S double buffer must fit 255 registers at 64 rows per warpgroup


@dataclass(frozen=True)
class HopperConfig:
    """One launch configuration of ``_binary_attn_fwd_sm90_kernel``.

    Attributes:
        block_n: query rows per CTA (64: one warpgroup, 128: two warpgroups).
        block_m: keys per tile (the N of the float8 wgmma, the K of the P.V wgmma).
        stages: K-sign and V tiles in the shared-memory ring.
        peel: peel the last key tile so only it masks columns >= M (311 instead of 346 instructions per
            tile at D 64, but 157 registers instead of 125: 3 CTAs per SM instead of 4).
        poly_exp: 0 (every exp2 on the MUFU), or 4 / 8: one exp2 in that many as a polynomial on the FMA
            pipes (``exp2_mix``). Slower on the H200 under structure (a) (session 10, N 4096 D 64: 0.515 /
            0.544 ms against 0.490 with 0): its loop issues 211 instructions per tile. Under structure (b) with
            ``mma_rowsum`` (153 instructions, 202 with poly_exp 4) no faster either (session 13: 1.857 / 1.915 /
            1.841 ms at (1, 16, 16384, 64) with 0 / 4 / 8): the exp2 unit does not bind (``hopper_ablation.py``).
        mma_rowsum: the row sums l of P on the tensor cores (one more wgmma per tile, P times a ones
            tile) instead of 32 FADD and 4 SHFL per thread; l then sums P as rounded for the P.V
            product, so lse is exact to that operand's roundoff (not float32's), the output as before.
        consumers: 0 for structure (a) (``kernel_sage``); 1-3 for structure (b) (``kernel_pingpong``): a
            producer warp and that many 64-row consumer warpgroups per CTA (block_n 64).
        pingpong: under structure (b), the consumers take turns issuing their products (FlashAttention-3's
            schedule); False lets them issue freely.
        maxnreg: structure (a): ptxas' register limit per thread (0: its own choice). 128 fits 4 CTAs per SM
            where the kernel takes more (D 72: 135 -> 128 with 24 B of spills, two LDL and two STL per key tile;
            offline, session 15, unmeasured).
    """

    block_n: int = 64
    block_m: int = 64
    stages: int = 2
    peel: bool = False
    poly_exp: int = 0
    mma_rowsum: bool = False
    consumers: int = 0
    pingpong: bool = True
    maxnreg: int = 0

    def __post_init__(self):
        if self.block_n not in (64, 128):
            raise ValueError(f"block_n must be 64 or 128, got {self.block_n}")
        if self.block_m not in (32, 64, 128):
            raise ValueError(f"block_m must be 32, 64 or 128, got {self.block_m}")
        if not 2 <= self.stages <= 4:
            raise ValueError(f"stages must be in [2, 4], got {self.stages}")
        if self.poly_exp not in (0, 4, 8):
            raise ValueError(f"poly_exp must be 0, 4 or 8, got {self.poly_exp}")
        if not 0 <= self.consumers <= 3:
            raise ValueError(f"consumers must be in [0, 3], got {self.consumers}")
        if self.consumers and (self.block_n != 64 or self.peel):
            raise ValueError("consumers > 0 takes block_n 64 without peel")
        if self.maxnreg and (self.consumers or not 64 <= self.maxnreg <= 255 or self.maxnreg % 8):
            raise ValueError(f"maxnreg takes structure (a) and a multiple of 8 in [64, 255], got {self.maxnreg}")
        object.__setattr__(self, "peel", bool(self.peel))  # "64x64x2x1" on a command line
        object.__setattr__(self, "mma_rowsum", bool(self.mma_rowsum))
        object.__setattr__(self, "pingpong", bool(self.pingpong))

    @property
    def num_warps(self) -> int:
        """One warpgroup (4 warps) per 64 query rows; structure (b): the default partition's warpgroup."""
        return 4 if self.consumers else self.block_n // 16

    @property
    def rows_per_cta(self) -> int:
        """Query rows of one CTA."""
        return self.block_n * max(1, self.consumers)

    @property
    def consumer_regs(self) -> int:
        """setmaxnreg of each consumer warpgroup under structure (b): the 64K-register file split over
        the consumers and the producer's warpgroup (24 each), in multiples of 8, at most 240."""
        return min(240, (65536 // 128 - 24) // max(1, self.consumers) // 8 * 8)


def sign_chunks(dim: int) -> tuple[int, int]:
    """``(KC, NKC)``: the 8-bit sign operand as NKC TMA boxes of KC channels, KC * NKC >= dim.

    The K of the float8 wgmma is padded to a multiple of 32 (D 72 -> 96, not the 128 of the tl.dot
    kernels); TMA boxes must be powers of two, so a non-power-of-two multiple is split in 32s.
    """
    padded = -(-dim // INT8_K) * INT8_K
    if padded & (padded - 1) == 0:
        return padded, 1
    return INT8_K, padded // INT8_K


def forward_sign_box(dim: int) -> tuple[int, int]:
    """``(KC, 1)``: the forward's sign operand as one TMA box of KC channels, the power of two >= D (at least 32):
    channels past the stored 32-multiple read as TMA's zero fill. One box and one wgmma group per tile instead of
    ``sign_chunks``' 32-channel boxes: at D 72, 266 instructions per key tile against 309 with three boxes (SASS,
    ``hopper_sass.py d72_dit``), for a third more float8 Q.K^T work; H200 (session 15): 0.289 -> 0.239 ms at
    (16, 16, 1024, 72), 0.072 -> 0.064 at (8, 8, 1024, 96)."""
    return max(INT8_K, 1 << (dim - 1).bit_length()), 1


def value_width(dim_v: int) -> int:
    """DVP: the P.V accumulator width, a power of two >= Dv (V's TMA box zero-fills channels past Dv)."""
    return max(16, 1 << (dim_v - 1).bit_length())


def value_split(dim_v: int) -> tuple[int, int]:
    """``(DVP, DVT)`` of structure (a): the P.V as a 64-wide product and a tail of DVT channels (a power of two,
    at least 16) where 64 < Dv <= 96, so Dv 72 / 80 take 64 + 16 and Dv 96 64 + 32 instead of a 128-wide
    product (twice the tensor work and O registers at Dv 72); else ``(value_width(Dv), 0)``."""
    if 64 < dim_v <= 96:
        return 64, value_width(dim_v - 64)
    return value_width(dim_v), 0


def hopper_config(n: int, dim: int, dim_v: int) -> HopperConfig:
    """The tile table: 64 x 64 tiles, 2 stages (structure (a)); 3 free-issuing consumers (structure (b)) at
    N >= 4096 with Dv > 64, and N >= 8192: measured faster at (4, 16, 4096, 128) and (1, 16, 16384, 64), slower
    at N <= 4096 with D 64. Session 13 measured the table's extrapolations (``attention_hopper.py --graph``):
    1.290 ms (1.41x cuDNN) at (2, 16, 8192, 128), 1.314 (1.35x) at (8, 16, 4096, 96), 0.948 (1.27x) at
    (2, 16, 8192, 64); (16, 16, 2048, 128) stays structure (a): 0.847 against 0.835 with 3 consumers + rowsum.

    Registers per thread (4 warps): 126 at D = Dv = 64 (4 CTAs per SM by registers, 28.8 KB shared
    each), 168 at 128 (3 CTAs); 64 x 128 tiles take 226 at D 64 (2 CTAs). H200 (session 8): 0.686 / 1.842 ms at
    (4, 16, 4096, 128) / (1, 16, 16384, 64) against 0.756 / 1.892 (64 x 128 x 2) and 0.838 / 2.008 (64 x 64 x 3).
    H200 (session 12, CUDA-graph GPU time, ``attention_hopper.py --graph``), structure (a) against 3 consumers
    without turns, 3 stages: 0.757 / 0.697 ms at (4, 16, 4096, 128), 1.884 / 1.801 at (1, 16, 16384, 64),
    0.509 / 0.521 at (8, 8, 4096, 64), 0.120 / 0.130 at (12, 6, 1680, 64), 0.124 / 0.158 at (32, 6, 1024, 64)
    (192-row CTAs, one per SM: fewer, larger waves).
    """
    if n >= 8192 or (n >= 4096 and dim_v > 64):
        return HopperConfig(64, 64, 3, consumers=3, pingpong=False)
    return HopperConfig(64, 64, 2)
