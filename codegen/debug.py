"""Debug path: the integer scores ``h`` exactly as the attention kernels form them (for tests)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import padded_dim
from .tiles import load_signs


@triton.jit
def _integer_scores_kernel(qb_ptr, kb_ptr, h_ptr, N, M, s_q, s_k, D: tl.constexpr, DP: tl.constexpr,
                           BLOCK: tl.constexpr, FROM_BITS: tl.constexpr):
    """h ``(BH, N, M)`` int32 = int8 dot of the signs; program = (query block, key block, batch*head)."""
    bh = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    qs = load_signs(qb_ptr + bh * N * s_q, rows, rows < N, s_q, D, DP, FROM_BITS)
    ks = load_signs(kb_ptr + bh * M * s_k, cols, cols < M, s_k, D, DP, FROM_BITS)
    h = tl.dot(qs, tl.trans(ks), out_dtype=tl.int32)
    tl.store(h_ptr + bh * N * M + rows[:, None] * M + cols[None, :], h, mask=(rows < N)[:, None] & (cols < M)[None, :])


def integer_scores(qsrc: torch.Tensor, ksrc: torch.Tensor, head_dim: int, from_bits: bool) -> torch.Tensor:
    """int32 ``(B, H, N, M)`` scores from packed bits ``(B, H, L, 1, W)`` or int8 signs ``(B, H, L, DP)``."""
    bsz, heads, n = qsrc.shape[:3]
    m = ksrc.shape[2]
    h = torch.empty(bsz, heads, n, m, dtype=torch.int32, device=qsrc.device)
    block = 32
    grid = (triton.cdiv(n, block), triton.cdiv(m, block), bsz * heads)
    _integer_scores_kernel[grid](qsrc, ksrc, h, n, m, qsrc.shape[-1], ksrc.shape[-1],
                                 D=head_dim, DP=padded_dim(head_dim), BLOCK=block, FROM_BITS=from_bits)
    return h
