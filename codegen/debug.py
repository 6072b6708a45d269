"""Debug paths: the integer scores ``h`` exactly as the attention kernels form them, and a memory
checker for kernels run under the Triton interpreter (tests)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import triton
import triton.language as tl

from .configs import padded_dim
from .tiles import load_signs, unpack_sign_bits


class OutOfBounds(RuntimeError):
    """A kernel under the interpreter touched memory outside every tensor of its launch."""


@contextlib.contextmanager
def checked_memory() -> Iterator[list[str]]:
    """Check every unmasked lane of every load and store of interpreted kernels against the launch's tensors.

    Under ``TRITON_INTERPRET=1`` a kernel reads raw CPU addresses; an address past its tensor reads
    whatever lies there (garbage, or a crash on the GPU). Inside this context each launch records the
    storage ranges of its tensor arguments, and a lane whose mask is on must lie inside one of them, or
    ``OutOfBounds`` (wrapped in Triton's ``InterpreterError``) names the kernel and the addresses.
    Yields the names of the kernels launched, in order.

    Raises:
        RuntimeError: not under the Triton interpreter.
    """
    from triton.runtime import interpreter as interp

    if not isinstance(interp.interpreter_builder, interp.InterpreterBuilder):
        raise RuntimeError("checked_memory needs TRITON_INTERPRET=1")
    builder, executor = interp.interpreter_builder, interp.GridExecutor
    ranges: list[tuple[int, int]] = []
    launched: list[str] = []
    init, load, store = executor._init_args_hst, builder.create_masked_load, builder.create_masked_store

    def record(self, args_dev, kwargs):
        args_hst, kwargs_hst = init(self, args_dev, kwargs)
        ranges.clear()
        for arg in (*args_hst, *kwargs_hst.values()):
            if isinstance(arg, torch.Tensor):
                storage = arg.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        launched.append(self.fn.__name__)
        return args_hst, kwargs_hst

    def check(ptrs, mask, what):
        addr = np.asarray(ptrs.data).astype(np.uint64)
        live = addr[np.broadcast_to(np.asarray(mask.data), addr.shape)]
        size = np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize
        inside = np.zeros(live.shape, dtype=bool)
        for lo, hi in ranges:
            inside |= (live >= lo) & (live + size <= hi)
        if not inside.all():
            raise OutOfBounds(f"{what} outside its tensors in {launched[-1]}: {int((~inside).sum())} lanes")

    def checked_load(ptrs, mask, other, *rest):
        check(ptrs, mask, "load")
        return load(ptrs, mask, other, *rest)

    def checked_store(ptrs, value, mask, *rest):
        check(ptrs, mask, "store")
        return store(ptrs, value, mask, *rest)

    executor._init_args_hst = record
    builder.create_masked_load, builder.create_masked_store = checked_load, checked_store
    try:
        yield launched
    finally:
        executor._init_args_hst = init
        builder.create_masked_load, builder.create_masked_store = load, store


@triton.jit
def _integer_scores_kernel(qb_ptr, kb_ptr, h_ptr, N, M, s_q, s_k, D: tl.constexpr, DP: tl.constexpr,
                           BLOCK: tl.constexpr, FROM_BITS: tl.constexpr):
    """h ``(BH, N, M)`` int32 = int8 dot of the signs; program = (query block, key block, batch*head)."""
    bh = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if FROM_BITS:
        qs = unpack_sign_bits(qb_ptr + bh * N * s_q, rows, rows < N, s_q, D, DP)
        ks = unpack_sign_bits(kb_ptr + bh * M * s_k, cols, cols < M, s_k, D, DP)
    else:
        qs = load_signs(qb_ptr + bh * N * s_q, rows, rows < N, s_q, DP)
        ks = load_signs(kb_ptr + bh * M * s_k, cols, cols < M, s_k, DP)
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
