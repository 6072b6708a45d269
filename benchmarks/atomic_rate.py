"""How many float32 atomic adds per second does the GPU retire in the pattern a dQ-by-atomics backward would use?

Question (kernel_notes, session 22): ste's query pass could be replaced by dQ partials that the key kernel adds
into a float32 ``(B*H, N, D)`` buffer: per (key tile, batch*head) program, every query tile adds a ``(BLOCK_N,
D)`` tile. That is worth building only if the adds take less than the query pass they replace (~0.4 ms at (8, 8,
4096, 64) on the H200). Here a Triton kernel does exactly those adds (values from a small random tile, no
attention work), timed with CUDA-graph replays; the result is checked against the float64 sum. Usage, on the GPU
machine: ``python benchmarks/atomic_rate.py [--shapes 8,8,4096,64 32,6,1024,64] [--block-m 64]``.
"""
import argparse
import logging

import torch
import triton
import triton.language as tl

from bench_common import bench

log = logging.getLogger("atomic_rate")


@triton.jit
def _tile_adds_kernel(dq_ptr, part_ptr, N, D: tl.constexpr, BLOCK_N: tl.constexpr, VECTOR: tl.constexpr):
    """Program ``(key tile, bh)``: adds ``part[key tile % 8]`` (a ``(BLOCK_N, D)`` float32 tile) into every query
    tile of ``dq[bh]``, as a key-side backward program would add its dQ partials."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    part = tl.load(part_ptr + (tl.program_id(0) % 8) * BLOCK_N * D + rows[:, None] * D + d[None, :])
    for t in range(tl.cdiv(N, BLOCK_N)):
        q = t * BLOCK_N + rows
        ptrs = dq_ptr + (bh * N + q)[:, None] * D + d[None, :]
        if VECTOR:
            tl.atomic_add(ptrs, part, mask=(q < N)[:, None], sem="relaxed")
        else:  # the transposed (D x BLOCK_N) order of a dQ^T accumulator
            tl.atomic_add(tl.trans(ptrs), tl.trans(part), mask=tl.trans((q < N)[:, None] & (d < D)[None, :]),
                          sem="relaxed")


def measure(shape, block_m: int, block_n: int, vector: bool) -> dict:
    bsz, heads, n, dim = shape
    key_tiles = triton.cdiv(n, block_m)
    dq = torch.zeros(bsz * heads, n, dim, device="cuda", dtype=torch.float32)
    part = torch.randn(8, block_n, dim, device="cuda", dtype=torch.float32)

    def run():
        _tile_adds_kernel[(key_tiles, bsz * heads)](dq, part, n, D=dim, BLOCK_N=block_n, VECTOR=vector)

    dq.zero_()
    run()
    torch.cuda.synchronize()
    tiles = part.double()
    want = sum(tiles[k % 8] for k in range(key_tiles))  # (BLOCK_N, D) per query tile
    want = want.repeat(triton.cdiv(n, block_n), 1)[:n]
    err = (dq.double() - want[None]).abs().max().item() / want.abs().max().item()
    ms = bench(run)
    adds = key_tiles * bsz * heads * n * dim
    return dict(shape=shape, block_m=block_m, order="row" if vector else "transposed", ms=ms,
                adds_g=adds / 1e9, rate_t_per_s=adds / (ms * 1e-3) / 1e12, rel_err=err)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["8,8,4096,64", "32,6,1024,64", "4,16,4096,128"])
    parser.add_argument("--block-m", type=int, default=64)
    parser.add_argument("--block-n", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("| shape (B, H, N, D) | keys per program | order | adds (G) | ms | T adds/s | rel err |")
    print("|---|---|---|---|---|---|---|")
    for text in args.shapes:
        shape = tuple(int(x) for x in text.split(","))
        for vector in (True, False):
            r = measure(shape, args.block_m, args.block_n, vector)
            print(f"| {shape} | {args.block_m} | {r['order']} | {r['adds_g']:.3f} | {r['ms']:.3f} | "
                  f"{r['rate_t_per_s']:.3f} | {r['rel_err']:.1e} |")


if __name__ == "__main__":
    main()
