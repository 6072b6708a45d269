"""Host (CPU) time of one bitlower forward call per path, beside its GPU time.

Question: is a path host-bound inside a whole model? Each path is called ``--calls`` times back to
back without synchronising; the wall time per call is the host cost while the GPU time per call is
shorter (else the launch queue fills and the wall time is the GPU's: take a small ``--shape`` for the
host time alone). GPU time per call: ``triton.testing.do_bench``. Paths: the Gluon launcher
(``launch_hopper_forward``), the same through its opaque operator (``torch.ops.bitlower.hopper_fwd``), the
public eager API (``bitlower.binary_attention``, the plan's kernels) and that call compiled
(``fullgraph=True``), with the plan's forward, with ``forward="hopper"`` and the stats pass inside the Gluon operator
(``hopper_stats="op"``; the default traces it before), each without and with ``codegen.direct_launch`` (the
cached compiled kernel relaunched without Triton's binder). Usage, on the GPU machine:
``python benchmarks/host_time.py --shape 32 6 1601 64``; ``--profile K`` adds the K functions with the most
cumulative host time under ``cProfile`` per path (where the host time goes).
"""
import argparse
import cProfile
import io
import pstats
import time

import torch
from triton.testing import do_bench

import bitlower
from bench_common import timm_qkv, with_attribute
from bitlower.codegen import direct_launch
from bitlower.codegen.hopper import launch_hopper_forward
from bitlower.codegen.plan import KernelOptions
from bitlower.source_hash import SOURCE_HASH
from bitlower.spec import CallSpec


def host_us(fn, calls: int) -> float:
    """Mean host microseconds per call of ``calls`` unsynchronised calls (after a synchronised warm-up)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def profile_table(fn, calls: int, top: int) -> str:
    """``cProfile`` of ``calls`` unsynchronised calls: the ``top`` entries by cumulative time (us per call)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 6, 1601, 64], metavar=("B", "H", "N", "D"))
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="print cProfile's top K per path")
    args = parser.parse_args()
    bsz, heads, n, dim = args.shape
    q, k, v = timm_qkv(bsz, heads, n, dim)
    spec = CallSpec(scale=dim ** -0.5)
    hopper = KernelOptions(forward="hopper")  # one object: built per call, Dynamo would guard its fields each call
    stats_in_op = KernelOptions(forward="hopper", hopper_stats="op")
    compiled_plan = torch.compile(lambda: bitlower.binary_attention(q, k, v), fullgraph=True)
    compiled_hopper = torch.compile(lambda: bitlower.binary_attention(q, k, v, kernel_options=hopper), fullgraph=True)
    launcher = lambda: launch_hopper_forward(q, k, v, None, None, None, spec)  # noqa: E731
    rows = {
        "launch_hopper_forward": launcher,
        "torch.ops.bitlower.hopper_fwd": lambda: torch.ops.bitlower.hopper_fwd(
            q, k, v, None, None, None, *spec.op_args(), spec.save_bits, True, SOURCE_HASH),
        "bitlower.binary_attention": lambda: bitlower.binary_attention(q, k, v),
        "compiled, plan": compiled_plan,
        "compiled, forward=hopper": compiled_hopper,
        "compiled, forward=hopper, hopper_stats=op": torch.compile(lambda: bitlower.binary_attention(
            q, k, v, kernel_options=stats_in_op), fullgraph=True),
    }
    paths = {}
    for name, fn in rows.items():  # each path without the direct launch, then with it
        paths[name] = with_attribute(fn, direct_launch, "ENABLED", False)
        paths[f"{name}, direct launch"] = with_attribute(fn, direct_launch, "ENABLED", True)
    print(f"shape {tuple(args.shape)}, {torch.cuda.get_device_name()}, {args.calls} calls")
    print("| path | host us/call | GPU us/call |\n|---|---|---|")
    with torch.no_grad():
        for name, fn in paths.items():
            host = host_us(fn, args.calls)
            gpu = do_bench(fn, warmup=50, rep=200, return_mode="median") * 1e3
            print(f"| {name} | {host:.1f} | {gpu:.1f} |")
        for name, fn in paths.items() if args.profile else ():
            print(f"\n## {name}: cProfile, {args.calls} calls\n{profile_table(fn, args.calls, args.profile)}")


if __name__ == "__main__":
    main()
