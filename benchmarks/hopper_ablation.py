"""Which pipe binds the Gluon forward's key loop? Time structure (a) with one part of the loop removed.

Each mode runs in a fresh process that swaps one ``@gluon.jit`` helper of ``codegen.hopper.kernel_sage``
before the first compile (outputs are wrong by design: timing only, nothing here is checked):

    base    the kernel as shipped (config 64x64x2, structure (a); the stats pass included)
    noexp   exp2 -> one FMUL per score (the MUFU block gone, same instruction count)
    nopv    P.V not issued (P still rounded to bf16 and passed to the wait, the V barrier still waited)
    noqk    S = Q.K^T not issued (the K barrier still waited; S stays the previous accumulator)
    a+b     both removals (``noexp+nopv``: the Q.K^T product and the loop's other work alone)
    stats   the stats pass alone (``pair_stats`` as the launcher calls it); ``stats_RxW``: R rows, W warps
            per program instead of ``configs.PROLOGUE_ROWS`` x ``PROLOGUE_WARPS``
    copy    q and k copied (one ``torch.Tensor.copy_`` of both): the bandwidth the stats pass is held to (issue 14)

If the loop time is the sum of the tensor and the MUFU time, ``nopv`` saves P.V's tensor cycles whole
(D 64: 128 of ~448 cycles per 64 x 64 tile and SM); if the two overlap, it saves ~nothing while
``noexp`` saves the MUFU block. GPU time from ``do_bench_cudagraph`` medians, one process per mode.

    python benchmarks/hopper_ablation.py [--modes base noexp nopv noqk stats] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma_init

SHAPES = [(32, 6, 1024, 64), (8, 8, 4096, 64), (4, 16, 4096, 128), (1, 16, 16384, 64)]
MODES = ("base", "noexp", "nopv", "noqk", "stats", "stats_32x4", "stats_128x4", "stats_128x8", "stats_256x8", "copy", "noexp+nopv")


@gluon.jit
def _exp2_as_multiply(x, POLY_EVERY: gl.constexpr, CLAMP: gl.constexpr):
    """noexp: one FMUL per score instead of the MUFU exp2."""
    return x * 0.9990234375


@gluon.jit
def _issue_pv_skipped(v_s, ones_s, v_bar, tile, o, lsum, pf, alpha, STAGES: gl.constexpr, ONLINE: gl.constexpr,
                      o_layout: gl.constexpr, p_layout: gl.constexpr, l_layout: gl.constexpr,
                      ROWSUM_MMA: gl.constexpr):
    """nopv: P rounded and its V tile waited for, no wgmma."""
    p = gl.convert_layout(pf.to(v_s.dtype), p_layout)
    slot = tile % STAGES
    mbarrier.wait(v_bar.index(slot), (tile // STAGES) & 1)
    return warpgroup_mma_init(o), lsum, p  # the loop carries O as an async-accumulator value


@gluon.jit
def _issue_qk_skipped(q_s, k_s, k_bar, tile, s_acc, NKC: gl.constexpr, STAGES: gl.constexpr):
    """noqk: the K tile waited for, no wgmma."""
    slot = tile % STAGES
    mbarrier.wait(k_bar.index(slot), (tile // STAGES) & 1)
    return s_acc


def patch(mode: str) -> None:
    """Swap the helper that ``mode`` removes (before any compile in this process)."""
    from bitlower.codegen import stats
    from bitlower.codegen.hopper import kernel_sage

    if mode.startswith("stats_"):
        stats.PROLOGUE_ROWS, stats.PROLOGUE_WARPS = map(int, mode[len("stats_"):].split("x"))
    parts = mode.split("+")
    if "noexp" in parts:
        kernel_sage.exp2 = _exp2_as_multiply
    if "nopv" in parts:
        kernel_sage._issue_pv = _issue_pv_skipped
    if "noqk" in parts:
        kernel_sage._issue_qk = _issue_qk_skipped


def run_mode(mode: str) -> dict:
    """``{shape: ms}`` of ``mode`` in this process."""
    import torch
    import triton

    from bitlower.codegen.hopper import HopperConfig, launch_hopper_forward
    from bitlower.codegen.stats import pair_stats
    from bitlower.spec import CallSpec

    patch(mode)
    times = {}
    for bsz, heads, n, dim in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(bsz, heads, n, dim, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
        spec = CallSpec(scale=dim ** -0.5, save_bits=False)
        if mode == "copy":
            qk = torch.stack([q, k])  # one launch over both operands' bytes, as the stats pass
            dst = torch.empty_like(qk)
            fn = lambda: dst.copy_(qk)  # noqa: E731
        elif mode.startswith("stats"):
            fn = lambda: pair_stats(q, k, None, None, spec, eff=False, signs=True, fp8_signs=True)  # noqa: E731
        else:
            fn = lambda: launch_hopper_forward(q, k, v, None, None, None, spec,  # noqa: E731
                                               config=HopperConfig(64, 64, 2))
        fn()
        torch.cuda.synchronize()
        times[str((bsz, heads, n, dim))] = triton.testing.do_bench_cudagraph(fn, rep=200)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", default="runs/hopper_ablation")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_mode(args.child)))
        return 0
    results = {}
    for mode in args.modes:
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ablate_{mode}"))
        proc = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{mode}: failed\n{proc.stderr[-3000:]}")
            continue
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hopper_ablation.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| shape | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for shape in map(str, SHAPES):
        lines.append(f"| {shape} | " + " | ".join(f"{results[m][shape]:.3f}" for m in results) + " |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "hopper_ablation.md"), "w") as f:
        f.write("CUDA-graph GPU time, ms (structure (a), 64x64x2; outputs wrong by design)\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
