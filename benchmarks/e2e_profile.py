"""Where does a compiled model's inference (or training step) time go? CUDA kernel times per backend, one process.

Question: which kernels make a bitlower-compiled timm/DiT model slower or faster than Inductor's? For
each backend (Inductor; bitlower with the plan's kernels; bitlower with extra kernel options) one model
from ``e2e_speed.MODELS`` is compiled, warmed up and run ``--steps`` times under ``torch.profiler``;
the table lists each kernel's summed CUDA time per step. Usage, on the GPU machine:

    python benchmarks/e2e_profile.py --model vit_s8_320 --kernel-options "" "forward=hopper" [--host] --out $OUT
    python benchmarks/e2e_profile.py --model dit_b2_512 --train hamming --kernel-options "" "backward=hopper"
"""
import argparse
import logging
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_speed  # noqa: E402

log = logging.getLogger("e2e_profile")


def kernel_table(model: str, backend: str, kernel_options: str, steps: int, host: bool = False,
                 grad_mode: str | None = None):
    """``(rows, wall_ms, host_rows)``: rows (kernel name, CUDA us per step, launches per step), longest first;
    wall_ms the step's median wall time (``e2e_speed.time_ms``): wall minus the kernels' sum is the GPU's idle time.
    ``host``: host_rows (operator or runtime call, CPU us per step including what it calls, calls per step) from a
    second profile with CPU activity, longest first; else []. ``grad_mode``: a training step
    (``e2e_speed.make_step("train")``) in that mode instead of an inference call."""
    ctx = e2e_speed.Ctx(torch.device("cuda"), tiny=False, kernel_options=kernel_options)
    spec = e2e_speed.MODELS[model]
    net, inputs, _ = e2e_speed.build(spec, ctx, train=grad_mode is not None)
    torch._dynamo.reset()
    options = {}
    if backend == "bitlower":
        options.update({"kernel_options": kernel_options} if kernel_options else {})
        options.update({"grad_mode": grad_mode} if grad_mode else {})
    fn = torch.compile(net, backend=backend, options=options or None)
    step = e2e_speed.make_step("train" if grad_mode else "infer", fn, net, inputs, ctx)
    for _ in range(3):
        step()
    ctx.sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        ctx.sync()
    rows = [(e.key, e.device_time_total / steps, e.count // steps) for e in prof.key_averages()
            if e.device_time_total > 0]
    host_rows = []
    if host:  # CPU time per operator / CUDA runtime call (the profiler's own overhead inflates every row alike)
        with profile(activities=[ProfilerActivity.CPU]) as cpu_prof:
            for _ in range(steps):
                step()
            ctx.sync()
        host_rows = sorted(((e.key, e.cpu_time_total / steps, e.count // steps) for e in cpu_prof.key_averages()),
                           key=lambda r: -r[1])
    return sorted(rows, key=lambda r: -r[1]), e2e_speed.time_ms(step, ctx), host_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_s8_320", choices=sorted(e2e_speed.MODELS))
    parser.add_argument("--kernel-options", nargs="*", default=[""],
                        help='bitlower kernel_options, one bitlower run each ("": the plan\'s choice)')
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--out", type=Path, default=None, help="folder for e2e_profile_<model>.md")
    parser.add_argument("--host", action="store_true", help="also the host (CPU) time per operator and runtime call")
    parser.add_argument("--train", default=None, choices=["hamming", "ste", "stopgrad"],
                        help="profile a training step (bf16 autocast, AdamW) in this grad mode instead of inference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    runs = [("inductor", "")] + [("bitlower", opts) for opts in args.kernel_options]
    what = f"training step ({args.train})" if args.train else "inference"
    lines = [f"# {args.model}, {what}, CUDA kernel time per step ({torch.cuda.get_device_name()})", ""]
    for backend, opts in runs:
        rows, wall_ms, host_rows = kernel_table(args.model, backend, opts, args.steps, args.host, args.train)
        total = sum(us for _, us, _ in rows)
        lines += [f"## {backend} {opts or '(plan)'}: {total / 1e3:.3f} ms of kernels per step, {wall_ms:.3f} ms wall "
                  f"(GPU idle {wall_ms - total / 1e3:.3f} ms)", "",
                  "| kernel | us/step | launches/step |", "|---|---|---|"]
        lines += [f"| {name[:90]} | {us:.1f} | {n} |" for name, us, n in rows[:args.top]]
        lines.append("")
        if host_rows:
            lines += ["| host: operator or runtime call | CPU us/step (inclusive) | calls/step |", "|---|---|---|"]
            lines += [f"| {name[:90]} | {us:.1f} | {n} |" for name, us, n in host_rows[:args.top]]
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"e2e_profile_{args.model}.md").write_text(text)


if __name__ == "__main__":
    main()
