"""Where the host time of one Gluon forward call goes: its parts timed alone, medians of repeated runs.

``host_time.py`` times whole paths once each (one mean of unsynchronised calls; its runs on the GPU machine
differed by up to 30 % between processes). Here each part is timed in ``--repeats`` runs of ``--calls`` calls and
the median run reported: a CUDA allocation, one TMA descriptor, the launcher's Python with the kernel launch
stubbed, the launcher, the opaque operator (``torch.ops.bitlower.hopper_main``), the stats pass (its tl.dot launch
through the JIT and through ``direct_launch``), and the whole compiled call; ``--profiler K`` adds
``torch.profiler``'s K host operators with the most CPU time over the compiled calls. Usage, on the GPU machine:
``python benchmarks/host_parts.py --shape 16 16 256 72 --profiler 30``.
"""
import argparse
import statistics
import time

import torch

import bitlower
from bench_common import timm_qkv, with_attribute
from bitlower.codegen import direct_launch
from bitlower.codegen.hopper import launcher as hopper_launcher
from bitlower.codegen.hopper.launcher import _descriptor, launch_hopper_main, stats_pass
from bitlower.codegen.plan import KernelOptions
from bitlower.source_hash import SOURCE_HASH
from bitlower.spec import CallSpec


def median_us(fn, calls: int, repeats: int) -> float:
    """Median over ``repeats`` runs of the mean host microseconds per call of ``calls`` unsynchronised calls."""
    runs = []
    for _ in range(repeats):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(runs)


def profiler_table(fn, calls: int, top: int) -> str:
    """``torch.profiler``'s table of ``calls`` unsynchronised calls of ``fn``: the ``top`` host operators by CPU time
    (inclusive), CUDA kernels beside them."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 16, 256, 72], metavar=("B", "H", "N", "D"))
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profiler", type=int, default=0, metavar="K",
                        help="then torch.profiler's K host operators with the most CPU time in the compiled calls")
    args = parser.parse_args()
    bsz, heads, n, dim = args.shape
    q, k, v = timm_qkv(bsz, heads, n, dim)
    spec = CallSpec(scale=dim ** -0.5)
    stats = stats_pass(q, k, None, None, spec)
    operands = stats.main_operands()
    main_call = lambda: launch_hopper_main(*operands, v, None, spec, dim)  # noqa: E731
    stats_call = lambda: stats_pass(q, k, None, None, spec)  # noqa: E731
    hopper = KernelOptions(forward="hopper")
    compiled = torch.compile(lambda: bitlower.binary_attention(q, k, v, kernel_options=hopper), fullgraph=True)
    parts = {
        "torch.empty (B, H, N, 2) float32": lambda: torch.empty(bsz, heads, n, 2, device="cuda"),
        "one TMA descriptor": lambda: _descriptor(operands[0].view(bsz * heads, n, -1), [1, 64, 32]),
        "stats pass": with_attribute(stats_call, direct_launch, "TL_ENABLED", False),
        "stats pass, tl direct launch": with_attribute(stats_call, direct_launch, "TL_ENABLED", True),
        "launch_hopper_main, launch stubbed": with_attribute(main_call, hopper_launcher, "_launch", lambda *a: None),
        "launch_hopper_main": main_call,
        "torch.ops.bitlower.hopper_main": lambda: torch.ops.bitlower.hopper_main(
            *operands, v, None, dim, *spec.op_args(), True, SOURCE_HASH),
        "compiled, forward=hopper": compiled,
    }
    print(f"shape {tuple(args.shape)}, {torch.cuda.get_device_name()}, median of {args.repeats} x {args.calls} calls")
    print("| part | host us/call |\n|---|---|")
    with torch.no_grad():
        for name, fn in parts.items():
            print(f"| {name} | {median_us(fn, args.calls, args.repeats):.1f} |")
        if args.profiler:
            print(f"\n## compiled, forward=hopper: torch.profiler, {args.calls} calls\n")
            print(profiler_table(compiled, args.calls, args.profiler))


if __name__ == "__main__":
    main()
