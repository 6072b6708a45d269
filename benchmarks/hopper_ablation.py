"""Which pipe binds the Gluon forward's key loop? Time structure (a) with one part of the loop removed.

Each mode runs in a fresh process that swaps one ``@gluon.jit`` helper of ``codegen.hopper.kernel_sage``
before the first compile (outputs are wrong by design: timing only, nothing here is checked):

    base    the kernel as configured (``--config``; the stats pass included)
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

    python benchmarks/hopper_ablation.py [--modes base noexp nopv noqk stats] [--config 64x64x3x0x0x0x3x0]
        [--shapes 64,16,256,72 256,6,197,64] [--out DIR]
    PYTHONPATH=<triton 3.6 folder> python benchmarks/hopper_ablation.py --check [--config ...]   # CPU, CI

``--config`` picks the kernel (default structure (a) 64x64x2; a consumers field > 0 times structure (b), whose
loop takes the same swaps: ``_probs`` and ``_issue_pv`` come from ``kernel_sage``, its ``_issue_qk`` is its own).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma_init, warpgroup_mma_wait

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
    """nopv: P rounded and its V tile waited for, no wgmma. A full wait here retires the S issued just before
    (the shipped loop retires it right after its P.V issue): without it the loop's later ``wait(1)`` would leave
    S in flight under the scores and ptxas serialises every wgmma (C7514; the session-13 GPU run had that)."""
    p = gl.convert_layout(pf.to(v_s.dtype), p_layout)
    slot = tile % STAGES
    mbarrier.wait(v_bar.index(slot), (tile // STAGES) & 1)
    o, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, p))
    return warpgroup_mma_init(o), lsum, p  # the loop carries O as an async-accumulator value


@gluon.jit
def _issue_qk_skipped(q_s, k_s, k_bar, tile, s_acc, NKC: gl.constexpr, STAGES: gl.constexpr):
    """noqk: the K tile waited for, no wgmma."""
    slot = tile % STAGES
    mbarrier.wait(k_bar.index(slot), (tile // STAGES) & 1)
    return s_acc


@gluon.jit
def _issue_pv_ws_skipped(v_s, ones_s, v_bar, tile, o, lsum, pf, alpha, STAGES: gl.constexpr, ONLINE: gl.constexpr,
                         o_layout: gl.constexpr, p_layout: gl.constexpr, l_layout: gl.constexpr,
                         ROWSUM_MMA: gl.constexpr):
    """nopv under structure (b): as ``_issue_pv_skipped``, O left a plain tensor (retired at every loop edge
    there; wrapping it as an async accumulator makes ptxas serialise every wgmma, C7514)."""
    p = gl.convert_layout(pf.to(v_s.dtype), p_layout)
    slot = tile % STAGES
    mbarrier.wait(v_bar.index(slot), (tile // STAGES) & 1)
    o, p = warpgroup_mma_wait(num_outstanding=0, deps=(o, p))  # as _issue_pv_skipped
    return o, lsum, p


@gluon.jit
def _issue_qk_ws_skipped(q_s, k_s, k_bar, tile, s_acc, CONSUMER: gl.constexpr, NKC: gl.constexpr,
                         STAGES: gl.constexpr):
    """noqk under structure (b) (``kernel_pingpong``'s signature): the K tile waited for, no wgmma."""
    slot = tile % STAGES
    mbarrier.wait(k_bar.index(slot), (tile // STAGES) & 1)
    return s_acc


def patch(mode: str) -> None:
    """Swap the helper that ``mode`` removes (before any compile in this process)."""
    from bitlower.codegen import stats
    from bitlower.codegen.hopper import kernel_pingpong, kernel_sage

    if mode.startswith("stats_"):
        stats.PROLOGUE_ROWS, stats.PROLOGUE_WARPS = map(int, mode[len("stats_"):].split("x"))
    parts = mode.split("+")
    if "noexp" in parts:
        kernel_sage.exp2 = _exp2_as_multiply
    if "nopv" in parts:  # structure (b) imports it by name: its own global
        kernel_sage._issue_pv = _issue_pv_skipped
        kernel_pingpong._issue_pv = _issue_pv_ws_skipped
    if "noqk" in parts:
        kernel_sage._issue_qk = _issue_qk_skipped
        kernel_pingpong._issue_qk = _issue_qk_ws_skipped


def ptxas_notes(mode: str, config: str) -> str:
    """ptxas' notes for ``mode``'s kernel at (8, 8, 4096, 64), compiled offline for sm_90 (no GPU; the Triton of
    the GPU machine on ``PYTHONPATH``): a swap that makes ptxas serialise the wgmma (C75xx) would time something
    else than the removal it names."""
    import dataclasses

    import hopper_build as hb
    import kernel_resources as kr

    patch(mode)
    var = dataclasses.replace(next(v for v in hb.VARIANTS if v.name == "d64_mean_abs"),
                              config=tuple(map(int, config.split("x"))))
    (kernel, args, kwargs), _ = hb.record_gluon(var)
    compiled, _ = kr.compile_launch(kernel, args, kwargs, hb.SM90)
    return hb.ptxas_notes(compiled.asm["ptx"])


def check(config: str) -> int:
    """0 if every loop mode compiles without ptxas performance notes, else 1 (one fresh process per mode, all
    started at once)."""
    failed = 0
    modes = ("noexp", "nopv", "noqk", "noexp+nopv")
    procs = [subprocess.Popen([sys.executable, __file__, "--check-child", mode, "--config", config],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for mode in modes]
    for mode, running in zip(modes, procs):
        out, err = running.communicate()
        proc = subprocess.CompletedProcess(running.args, running.returncode, out, err)
        notes = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else "failed"
        bad = proc.returncode != 0 or "C75" in notes
        failed |= bad
        print(f"{'FAIL' if bad else 'ok  '} {mode:12s} {notes if proc.returncode == 0 else proc.stderr[-2000:]}")
    return int(failed)


def run_mode(mode: str, config: str = "64x64x2", shapes=tuple(SHAPES)) -> dict:
    """``{shape: ms}`` of ``mode`` in this process, at ``shapes`` ``(B, H, N, D)``."""
    import torch
    import triton

    from bitlower.codegen.hopper import HopperConfig, launch_hopper_forward
    from bitlower.codegen.stats import pair_stats
    from bitlower.spec import CallSpec

    patch(mode)
    times = {}
    for bsz, heads, n, dim in shapes:
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
            cfg = HopperConfig(*map(int, config.split("x")))
            fn = lambda: launch_hopper_forward(q, k, v, None, None, None, spec, config=cfg)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        times[str((bsz, heads, n, dim))] = triton.testing.do_bench_cudagraph(fn, rep=200)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", default="runs/hopper_ablation")
    parser.add_argument("--config", default="64x64x2",
                        help="HopperConfig as attention_hopper.py --configs writes it (structure (a) or (b))")
    parser.add_argument("--check", action="store_true",
                        help="compile every loop mode offline for sm_90 and fail on ptxas C75xx notes (no GPU)")
    parser.add_argument("--shapes", nargs="+", default=[",".join(map(str, s)) for s in SHAPES], metavar="B,H,N,D",
                        help="shapes to time (default: the four of SPEC §6 above N 1000)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--check-child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = [tuple(int(x) for x in text.split(",")) for text in args.shapes]
    if any(len(shape) != 4 for shape in shapes):
        parser.error(f"--shapes takes B,H,N,D, got {args.shapes}")
    if args.check:
        return check(args.config)
    if args.check_child:
        print(ptxas_notes(args.check_child, args.config))
        return 0
    if args.child:
        print(json.dumps(run_mode(args.child, args.config, shapes)))
        return 0
    results = {}
    for mode in args.modes:
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ablate_{mode}"))
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--config", args.config, "--shapes",
                               *args.shapes], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{mode}: failed\n{proc.stderr[-3000:]}")
            continue
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hopper_ablation.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| shape | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for shape in map(str, shapes):
        lines.append(f"| {shape} | " + " | ".join(f"{results[m][shape]:.3f}" for m in results) + " |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "hopper_ablation.md"), "w") as f:
        f.write(f"CUDA-graph GPU time, ms (config {args.config}; outputs wrong by design)\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
