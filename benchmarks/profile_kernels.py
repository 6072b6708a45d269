"""A workload for Nsight Compute: bitlower's forward and hamming backward at one SPEC §6 shape.

Question: what limits each kernel (issue slots, tensor pipe, memory, stalls)? This script only runs
the kernels a few times on random inputs; `ncu` reads the counters:

    ncu --clock-control none -k regex:_binary_attn --launch-skip 3 --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
        python benchmarks/profile_kernels.py --shape 0 > ncu_vit_s.txt

(`--clock-control none`: the H100's clocks stay as the benchmark saw them.)
"""
from __future__ import annotations

import argparse

import torch

import bitlower

SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
          (4, 16, 4096, 128), (1, 16, 16384, 64)]  # as benchmarks/attention.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=0, help="index into SHAPES")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bsz, heads, n, dim = SHAPES[args.shape]
    make = lambda: torch.randn(bsz, heads, n, dim, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                               requires_grad=True)
    q, k, v = make(), make(), make()
    grad_out = torch.randn_like(q)
    for _ in range(args.repeats):
        out = bitlower.binary_attention(q, k, v, grad_mode="hamming")
        torch.autograd.grad(out, (q, k, v), grad_out)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
