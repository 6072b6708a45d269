"""Where the host time of one Gluon forward call goes: its parts timed alone, medians of repeated runs.

``host_time.py`` times whole paths once each (one mean of unsynchronised calls; its runs on the GPU machine
differed by up to 30 % between processes). Here each part is timed in ``--repeats`` runs of ``--calls`` calls and
the median run reported: a CUDA allocation, one TMA descriptor, the launcher's Python with the kernel launch
stubbed, the launcher, the opaque operator (``torch.ops.bitlower.hopper_main``), the stats pass (its tl.dot launch
through the JIT), and the whole compiled call; ``--profiler K`` adds
``torch.profiler``'s K host operators with the most CPU time over the compiled calls. Usage, on the GPU machine:
``python benchmarks/host_parts.py --shape 16 16 256 72 --profiler 30``; ``--backward hamming``: the Gluon backward's
parts (its three stages, the opaque ``hopper_bwd``, eager and compiled forward + backward).
"""
import argparse
import statistics
import time

import torch

import bitlower
from bench_common import timm_qkv, with_attribute
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
    parser.add_argument("--backward", default="", metavar="GRAD_MODE",
                        help="the Gluon backward's parts instead (gradients of q, k, v in this grad mode)")
    args = parser.parse_args()
    if args.backward:
        backward_main(args)
        return
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
        "stats pass": stats_call,
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


def backward_parts(args) -> tuple[dict, object]:
    """``{name: call}`` of the Gluon backward's host parts at ``args.shape``, and the compiled forward + backward with
    ``backward=hopper`` (for ``--profiler``)."""
    from bitlower import codegen
    from bitlower.codegen.hopper import backward_launcher as stages
    from bitlower.codegen.hopper import backward_op  # noqa: F401  (registers bitlower::hopper_bwd)

    bsz, heads, n, dim = args.shape
    q, k, v = timm_qkv(bsz, heads, n, dim)
    do = torch.randn_like(v)
    spec = CallSpec(scale=dim ** -0.5, grad_mode=args.backward, save_bits=True)
    needs = [True, True, True, False, False, False]
    out, lse, qbits, kbits, qclip, kclip, a, b, row_state = codegen.forward(q, k, v, None, None, None, spec)
    cfg = stages.backward_config(lse, v, dim, spec)
    operands = stages.backward_operands(do, v, None, lse, qbits, kbits, a, row_state, spec, dim, needs, out, cfg)
    kernels = lambda: stages.launch_backward_kernels(*operands, v, None, row_state, a, b, spec, dim, needs, cfg)  # noqa: E731
    go, q_signs, k_signs, delta, rows = operands
    saved = (do, v, None, lse, qbits, kbits, qclip, kclip, a, b, row_state, spec, dim, needs)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    def compiled_step(options):
        fn = torch.compile(lambda *x: bitlower.binary_attention(*x, grad_mode=args.backward, kernel_options=options),
                           fullgraph=True)
        return lambda: torch.autograd.grad(fn(*leaves), leaves, do)

    hopper_step = compiled_step(KernelOptions(backward="hopper"))
    parts = {
        "stage 1 (row dots, sign tiles)": lambda: stages.backward_operands(do, v, None, lse, qbits, kbits, a, row_state,
                                                                           spec, dim, needs, out, cfg),
        "stage 2, launches stubbed": with_attribute(kernels, stages, "_launch", lambda *a: None),
        "stage 2": kernels,
        "torch.ops.bitlower.hopper_bwd": lambda: torch.ops.bitlower.hopper_bwd(
            go, v, None, q_signs, k_signs, delta, rows, row_state, a, b, *spec.op_args(), dim, needs, SOURCE_HASH),
        "launch_hopper_backward (eager)": lambda: stages.launch_hopper_backward(*saved, out=out),
        "codegen.backward, tl.dot (eager)": lambda: codegen.backward(*saved, KernelOptions(backward="tldot"), out=out),
        "compiled fwd + bwd, backward=tldot": compiled_step(KernelOptions(backward="tldot")),
        "compiled fwd + bwd, backward=hopper": hopper_step,
    }
    return parts, hopper_step


def backward_main(args) -> None:
    parts, hopper_step = backward_parts(args)
    print(f"backward ({args.backward}), shape {tuple(args.shape)}, {torch.cuda.get_device_name()}, median of "
          f"{args.repeats} x {args.calls} calls")
    print("| part | host us/call |\n|---|---|")
    for name, fn in parts.items():
        print(f"| {name} | {median_us(fn, args.calls, args.repeats):.1f} |")
    if args.profiler:
        print(f"\n## compiled fwd + bwd, backward=hopper: torch.profiler, {args.calls} calls\n")
        print(profiler_table(hopper_step, args.calls, args.profiler))


if __name__ == "__main__":
    main()
