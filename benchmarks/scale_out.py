"""Scale-out: a binary-attention DiT trained under ``torchrun`` on 1 and on N GPUs at the same global batch.

Question: does a DiT QAT run on 2 GPUs follow the 1-GPU loss curve for the same global batch within
noise, and what is the scaling efficiency, samples/s on N GPUs over N x samples/s on 1?

Workload (CUDA default): DiT-B/2 (12 blocks, width 768, 12 heads, D 64; 130M parameters) on the
digits upsampled to 32x32, one channel (16x16 = 256 tokens), 10 classes, label dropout 0.1; binarized
before training (BinaryAttention preset: mean_abs scalars, relative-position bias, STE) and trained
from scratch with the DDPM loss through the binary attention (QAT; no distillation, since an untrained
adaLN-Zero teacher predicts zeros); global batch 256, AdamW lr 3e-4, 20 learning-rate warm-up steps
then cosine, bf16 autocast, ``torch.compile(backend="bitlower")``. Why this size: ``train_flops``
gives 35 TFLOP per step, about 0.09 s on one H200 at 40% of its dense bf16 peak (989 TFLOP/s),
against an all-reduce of 0.5 GB of fp32 gradients that NVLink does in a few ms; the 8x8 digits DiT
of ``diffusion_digits.py`` is bound by kernel launches, where a second GPU cannot help.

Runs, each through the runtime's own DDP path (``Trainer``: ``setup()``, ``DistributedDataParallel``
around the model, ``ResumableBatches`` slicing each global batch over ranks, ``train_step`` with the
loss averaged over ranks); the driver launches them with ``torchrun --standalone``:

1. ``1gpu``: ``--nproc-per-node 1`` on GPU 0: the baseline curve and throughput;
2. ``1gpu_noise``: the same with another noise seed, on GPU 1 at the same time as run 1: same
   initial weights and data order, other diffusion noise, timesteps and label dropout;
3. ``Ngpu``: ``--nproc-per-node N`` on GPUs 0..N-1, per-process batch global / N, same initial
   weights and data order; rank r draws its noise from seed + r (the ``Trainer``'s seeding), so its
   curve cannot equal run 1's bit for bit even before reduction order differs.

Curve criterion: the per-step losses (global-batch mean, logged by rank 0) are averaged over windows
of ``--window`` steps; ``D(a, b)`` is the mean over windows of ``|window mean a - window mean b|``.
The N-GPU run matches "within noise" when ``D(1gpu, Ngpu) <= RATIO_LIMIT * D(1gpu, 1gpu_noise)``:
the noise is measured as the distance between two 1-GPU runs that differ only in their random draws.

Timing: rank 0 times every ``train_step`` (CUDA synchronised); the first ``--warmup`` steps
(compilation, autotuning, DDP bucket rebuilding) are excluded; samples/s = global batch x timed steps
/ their time; efficiency = samples/s(N) / (N x samples/s(1)).

Run (2x H200): ``python benchmarks/scale_out.py --out $OUT``. Expected 3-5 minutes, not yet measured:
200 steps are about 20 s on one GPU and 10 s on two by the estimate above; the rest is start-up and
compilation (twice at once for runs 1 and 2, then once more under DDP), the unknown part. Each launch
phase is stopped after ``--timeout-s`` (280 s). CPU (gloo, tiny DiT, eager, about 20 s on 2 cores):
``python benchmarks/scale_out.py --device cpu --out runs/scale_out_cpu``.

Writes ``scale_out.{md,json,png}`` and, per run, ``<run>/curve.jsonl`` (step, loss, step time),
``<run>/summary.json`` and ``<run>/torchrun.log``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from bitlower.app.arguments import key_value
from bitlower.models import create_model, load_digits_tensors
from bitlower.runtime import DiffusionConfig, TrainConfig, binarize_, preset
from bitlower.runtime.distributed import setup
from bitlower.runtime.tasks import DiffusionTask
from bitlower.runtime.trainer import Trainer, seed_everything

log = logging.getLogger("scale_out")

LABEL_DROPOUT = 0.1  # DiT's classifier-free-guidance label dropout
NOISE_SEED_OFFSET = 1000  # the noise reference's seed: far from seed + rank of any N-GPU rank
# With 10 windows, the ratio of two mean |difference|s of equally distributed runs stays under 2 in
# about 98% of cases if windows were independent (half-normal means: coefficient of variation
# 0.76 / sqrt(10) = 0.24 each, log-ratio sd 0.34, exp(2.05 * 0.34) = 2.0).
RATIO_LIMIT = 2.0
EXIT_GRACE_S = 60  # a worker that wrote its summary but has not exited by then is stopped (teardown hang)
LR_WARMUP_STEPS = 20  # linear learning-rate warm-up; the DiT starts from scratch
DEFAULTS = {  # per device: what fits the question there (CUDA) or a test (CPU: seconds on 2 cores)
    "cuda": dict(model="dit_b_2", model_arg=[], image_size=32, global_batch=256, steps=200, warmup=15,
                 compile_backend="bitlower", lr=3e-4),
    "cpu": dict(model="dit_s_2", model_arg=[("depth", 2), ("hidden_size", 64), ("num_heads", 2)], image_size=8,
                global_batch=16, steps=20, warmup=3, compile_backend="none", lr=1e-3),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: CUDA when available")
    p.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the scaled run")
    p.add_argument("--model", default=None, help="registered DiT name (cuda: dit_b_2; cpu: dit_s_2, tiny)")
    p.add_argument("--model-arg", type=key_value, action="append", default=None, metavar="KEY=VALUE",
                   help="DiT config override, repeatable; applied over the device's (cpu: depth=2 hidden_size=64 "
                        "num_heads=2)")
    p.add_argument("--image-size", type=int, default=None, help="digits upsampled to this side (cuda 32, cpu 8)")
    p.add_argument("--global-batch", type=int, default=None, help="cuda 256, cpu 16")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (cuda 200, cpu 20)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of the timing (cuda 15, cpu 3)")
    p.add_argument("--window", type=int, default=None, help="steps per loss window (default: steps // 10)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--compile-backend", default=None, help="torch.compile backend or 'none' (cuda bitlower)")
    p.add_argument("--seed", type=int, default=0, help="initial weights, data order and noise")
    p.add_argument("--timeout-s", type=float, default=280.0, help="per launch phase")
    p.add_argument("--out", default="runs/scale_out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: one torchrun process
    p.add_argument("--noise-seed", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = DEFAULTS[args.device]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model_arg is not defaults["model_arg"]:  # --model-arg overrides the device's model arguments
        args.model_arg = list(dict(defaults["model_arg"] + args.model_arg).items())
    args.window = args.window or max(1, args.steps // 10)
    args.noise_seed = args.seed if args.noise_seed is None else args.noise_seed
    if args.global_batch % args.nproc:
        p.error(f"--global-batch {args.global_batch} must divide by --nproc {args.nproc}")
    if not 0 <= args.warmup < args.steps:
        p.error(f"need 0 <= --warmup < --steps, got {args.warmup} and {args.steps}")
    return args


def train_flops(cfg, batch: int) -> float:
    """Training FLOPs of one step of a DiT: 3 x forward (backward = 2 x forward), matmuls only.

    Per token and block: qkv 2*C*3C, proj 2*C*C, MLP 2 * 2*C*rC (r = mlp_ratio), scores and P·V
    2 * 2*N*C; per sample and block the adaLN Linear 2*C*6C. Embedders and the final layer (under 1%
    at DiT-B/2) are left out; binary Q·K is counted as the dense product it replaces.
    """
    side = cfg.input_size if isinstance(cfg.input_size, int) else cfg.input_size[0]
    tokens, width = (side // cfg.patch_size) ** 2, cfg.hidden_size
    per_token = 2 * width * width * (3 + 1 + 2 * cfg.mlp_ratio) + 4 * tokens * width
    per_sample = cfg.depth * (tokens * per_token + 12 * width * width)
    return 3.0 * batch * per_sample


# ---------------------------------------------------------------- worker: one torchrun process

def build_trainer(args):
    """The binarized DiT, the digits and a ``Trainer`` (which starts the process group under torchrun)."""
    ctx = setup(args.device)
    torch.manual_seed(args.seed)  # the same initial weights in every run and rank
    model = create_model(args.model, input_size=args.image_size, in_channels=1, num_classes=10, learn_sigma=False,
                         class_dropout_prob=LABEL_DROPOUT, **dict(args.model_arg))
    binarize_(model, preset("binary_attention", keep_teacher=False))
    # As train_diffusion does: the task drops labels (it keeps the null row of the label table).
    model.y_embedder.dropout_prob = 0.0
    task = DiffusionTask(DiffusionConfig(), 1, 10, label_dropout=LABEL_DROPOUT)
    x, y = load_digits_tensors("train", image_size=args.image_size)  # (1437, 1, S, S), (1437,)
    backend = None if args.compile_backend == "none" else args.compile_backend
    config = TrainConfig(steps=args.steps, batch_size=args.global_batch, lr=args.lr, warmup_steps=LR_WARMUP_STEPS,
                         seed=args.seed, progress=False, log_every=0, compile_backend=backend, device=args.device)
    trainer = Trainer(model, task, TensorDataset(x.to(ctx.device), y.to(ctx.device)), config)
    if args.noise_seed != args.seed:  # data order stays config.seed's; noise, timesteps, dropout change
        seed_everything(args.noise_seed + ctx.rank)
    return trainer


def run_worker(args) -> None:
    """Train ``args.steps`` steps; rank 0 writes ``curve.jsonl`` as it goes and ``summary.json`` at the end."""
    trainer = build_trainer(args)
    ctx, out = trainer.ctx, Path(args.out)
    cuda = ctx.device.type == "cuda"
    curve = open(out / "curve.jsonl", "w") if ctx.is_main else None
    times = []
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        losses = trainer.train_step()  # ends with a host read of the all-reduced losses
        if cuda:
            torch.cuda.synchronize(ctx.device)
        times.append(time.perf_counter() - start)
        if curve is not None:
            curve.write(json.dumps({"step": step, "loss": losses["loss"], "grad_norm": losses.get("grad_norm"),
                                    "step_s": times[-1]}) + "\n")
            curve.flush()
    if curve is not None:
        curve.close()
        timed = times[args.warmup:]
        cfg = trainer.model.config
        summary = {
            "world_size": ctx.world_size, "global_batch": args.global_batch,
            "batch_per_process": args.global_batch // ctx.world_size, "steps": args.steps, "warmup": args.warmup,
            "warmup_s": sum(times[:args.warmup]), "timed_s": sum(timed),
            "samples_per_s": args.global_batch * len(timed) / sum(timed),
            "median_step_s": statistics.median(timed), "train_flops_per_step": train_flops(cfg, args.global_batch),
            "seed": args.seed, "noise_seed": args.noise_seed, "model": args.model, "model_config": vars(cfg),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "compile_backend": args.compile_backend, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(ctx.device) if cuda else "CPU",
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    del trainer  # DDP's reducer goes before its process group (the other order hung on exit with gloo)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- driver: launches, comparison, report

def torchrun_command(args, run_dir: Path, nproc: int, noise_seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(Path(__file__).resolve()), "--worker", "--out", str(run_dir), "--noise-seed", str(noise_seed)]
    for flag in ("device", "model", "image_size", "global_batch", "steps", "warmup", "lr", "compile_backend", "seed"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for key, value in args.model_arg:
        cmd += ["--model-arg", f"{key}={value!r}"]
    return cmd


def visible_gpus(indices) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the driver's GPU indices, through the driver's own setting when it has one."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = inherited.split(",") if inherited else [str(i) for i in range(max(indices) + 1)]
    return ",".join(names[i].strip() for i in indices)


def launch(args, name: str, nproc: int, gpus: list[int], noise_seed: int):
    """Start one ``torchrun`` in its own session; returns ``(process, run folder, log file)``."""
    run_dir = Path(args.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("curve.jsonl", "summary.json"):
        (run_dir / stale).unlink(missing_ok=True)
    threads = max(1, (os.cpu_count() or 1) // (2 * nproc))  # two launches can run at once
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", OMP_NUM_THREADS=str(threads))  # NVLink multicast stays off
    if args.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = visible_gpus(gpus)
    handle = open(run_dir / "torchrun.log", "w")
    proc = subprocess.Popen(torchrun_command(args, run_dir, nproc, noise_seed), stdout=handle,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    where = f" on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}" if args.device == "cuda" else ""
    log.info("scale_out: %s started: %d process(es)%s", name, nproc, where)
    return proc, run_dir, handle


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the launch's own process group (it was started in a new session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def wait_all(launched: dict, timeout_s: float) -> dict[str, str]:
    """Wait for every launch; stop what outlives ``timeout_s``, or ``EXIT_GRACE_S`` after its summary was written."""
    deadline, status, finished_at = time.monotonic() + timeout_s, {}, {}
    while len(status) < len(launched):
        for name, (proc, run_dir, handle) in launched.items():
            if name in status:
                continue
            if proc.poll() is not None:
                status[name] = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            elif (run_dir / "summary.json").exists() and time.monotonic() - finished_at.setdefault(
                    name, time.monotonic()) > EXIT_GRACE_S:
                stop(proc)
                status[name] = f"done (stopped: still exiting {EXIT_GRACE_S} s after its summary)"
            elif time.monotonic() > deadline:
                stop(proc)
                status[name] = f"stopped after {timeout_s:.0f} s"
            if name in status:
                handle.close()
                log.info("scale_out: %s %s", name, status[name])
        time.sleep(0.5)
    return status


def log_excerpt(path: Path, lines: int = 20) -> str:
    """The worker's last lines before torchrun's own report of the failure (its traceback says nothing)."""
    text = path.read_text().splitlines()
    agent = next((i for i, line in enumerate(text) if "failed (exitcode" in line), len(text))
    return "\n".join(text[max(agent - lines, 0):agent])


def read_run(run_dir: Path) -> dict | None:
    curve, summary = run_dir / "curve.jsonl", run_dir / "summary.json"
    if not (curve.exists() and summary.exists()):
        return None
    records = [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]
    return {**json.loads(summary.read_text()), "losses": [r["loss"] for r in records],
            "step_times": [r["step_s"] for r in records]}


def window_means(losses, window: int) -> np.ndarray:
    values = np.asarray(losses, dtype=np.float64)
    count = len(values) // window
    return values[:count * window].reshape(count, window).mean(1)  # (windows,)


def curve_distance(a, b, window: int) -> float:
    """Mean over windows of ``|window mean a - window mean b|``."""
    return float(np.abs(window_means(a, window) - window_means(b, window)).mean())


def compare(runs: dict, args) -> dict:
    base, noise, scaled = runs["1gpu"], runs["1gpu_noise"], runs[f"{args.nproc}gpu"]
    if not len(base["losses"]) == len(noise["losses"]) == len(scaled["losses"]) == args.steps:
        raise RuntimeError(f"loss curves of unequal length: {[len(r['losses']) for r in runs.values()]}")
    d_scaled = curve_distance(base["losses"], scaled["losses"], args.window)
    d_noise = curve_distance(base["losses"], noise["losses"], args.window)
    ratio = d_scaled / d_noise if d_noise > 0 else float("inf")
    signed = float((window_means(scaled["losses"], args.window) - window_means(base["losses"], args.window)).mean())
    return {
        "window": args.window, "distance_1_vs_n": d_scaled, "distance_1_vs_1_noise": d_noise, "ratio": ratio,
        "ratio_limit": RATIO_LIMIT, "within_noise": bool(ratio <= RATIO_LIMIT), "mean_signed_difference": signed,
        "efficiency": scaled["samples_per_s"] / (args.nproc * base["samples_per_s"]),
    }


def format_table(runs: dict, result: dict, args, wall_s: float) -> str:
    any_run = next(iter(runs.values()))
    unit, units = ("GPU", "GPUs") if args.device == "cuda" else ("process", "processes")
    labels = {"1gpu": f"1 {unit}", "1gpu_noise": f"1 {unit}, other noise seed (noise reference)",
              f"{args.nproc}gpu": f"{args.nproc} {units}"}
    lines = [
        f"Scale-out on {any_run['device']}, torch {any_run['torch']}: {args.model} "
        f"({any_run['parameters'] / 1e6:.1f}M parameters), binary attention (QAT), digits {args.image_size}x"
        f"{args.image_size}, global batch {args.global_batch}, {args.steps} steps, compile {args.compile_backend}. "
        f"Timing leaves out the first {args.warmup} steps. Wall time {wall_s:.0f} s.",
        "",
        "| run | batch per process | samples/s | median step ms | warm-up s | TFLOP/s per process "
        "| loss, last window |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in labels.items():
        run = runs[name]
        tflops = run["train_flops_per_step"] / run["median_step_s"] / run["world_size"] / 1e12
        last = window_means(run["losses"], args.window)[-1]
        lines.append(f"| {label} | {run['batch_per_process']} | {run['samples_per_s']:.1f} | "
                     f"{1e3 * run['median_step_s']:.1f} | {run['warmup_s']:.1f} | {tflops:.3g} | {last:.4f} |")
    verdict = "within noise" if result["within_noise"] else "NOT within noise"
    lines += [
        "",
        f"Scaling efficiency: samples/s on {args.nproc} over {args.nproc} x samples/s on 1 = "
        f"**{result['efficiency']:.3f}**.",
        "",
        f"Loss curves, mean over {args.steps // args.window} windows of {args.window} steps of |difference of "
        f"window means|: 1 vs {args.nproc} {units} {result['distance_1_vs_n']:.4f}; 1 vs 1 with other noise "
        f"{result['distance_1_vs_1_noise']:.4f}; ratio {result['ratio']:.2f} (limit {RATIO_LIMIT}): **{verdict}**. "
        f"Mean signed difference ({args.nproc} minus 1): {result['mean_signed_difference']:+.4f}.",
    ]
    return "\n".join(lines)


def plot(runs: dict, args, path: Path) -> None:
    """Loss per step and window means of every run, and step times; skipped with a warning without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        log.warning("scale_out: no plot (%s)", err)
        return
    fig, (ax_loss, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    centers = np.arange(args.steps // args.window) * args.window + (args.window + 1) / 2
    for (name, run), color in zip(runs.items(), ("C0", "C2", "C1")):
        steps = np.arange(1, len(run["losses"]) + 1)
        ax_loss.plot(steps, run["losses"], color=color, alpha=0.3, linewidth=0.8)
        ax_loss.plot(centers, window_means(run["losses"], args.window), "o-", color=color, label=name)
        ax_time.plot(steps, 1e3 * np.asarray(run["step_times"]), color=color, label=name)
    ax_loss.set(xlabel="step", ylabel="training loss (global batch)", yscale="log",
                title=f"{args.model}, global batch {args.global_batch}")
    ax_time.axvspan(0.5, args.warmup + 0.5, color="grey", alpha=0.2, label="warm-up (not timed)")
    ax_time.set(xlabel="step", ylabel="step time (ms)", yscale="log", title="step time, rank 0")
    ax_loss.legend()
    ax_time.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def preflight(args) -> str | None:
    """Why the runs cannot start (too few GPUs, an unusable compile backend), or None."""
    if args.device == "cuda" and torch.cuda.device_count() < max(2, args.nproc):
        return f"needs {max(2, args.nproc)} GPUs (the noise reference runs on GPU 1), found {torch.cuda.device_count()}"
    if args.compile_backend != "none":
        try:
            torch._dynamo.lookup_backend(args.compile_backend)
        except Exception as err:  # an unknown name or a backend that does not import
            return f"compile backend {args.compile_backend!r} unusable ({err}); pass --compile-backend none"
    return None


def run_driver(args) -> int:
    out, started = Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    problem = preflight(args)
    if problem is not None:
        log.error("scale_out: %s", problem)
        return 2
    noise_seed = args.seed + NOISE_SEED_OFFSET
    phases = [{"1gpu": (1, [0], args.seed), "1gpu_noise": (1, [1], noise_seed)},  # at the same time
              {f"{args.nproc}gpu": (args.nproc, list(range(args.nproc)), args.seed)}]
    runs, status = {}, {}
    for phase in phases:
        launched = {name: launch(args, name, *spec) for name, spec in phase.items()}
        status.update(wait_all(launched, args.timeout_s))
        for name, (_, run_dir, _) in launched.items():
            runs[name] = read_run(run_dir)
            if not status[name].startswith("done") or runs[name] is None:
                log.error("scale_out: %s %s; from %s:\n%s", name, status[name], run_dir / "torchrun.log",
                          log_excerpt(run_dir / "torchrun.log"))
                partial = {"status": status, "args": vars(args), "runs": {k: v for k, v in runs.items() if v}}
                (out / "scale_out.json").write_text(json.dumps(partial, indent=1))
                return 1
    result = compare(runs, args)
    wall_s = time.perf_counter() - started
    table = format_table(runs, result, args, wall_s)
    print(table, flush=True)
    (out / "scale_out.md").write_text(table + "\n")
    record = {**result, "wall_s": wall_s, "status": status, "args": vars(args), "runs": runs}
    (out / "scale_out.json").write_text(json.dumps(record, indent=1))
    plot(runs, args, out / "scale_out.png")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker:
        run_worker(args)
        return 0
    return run_driver(args)


if __name__ == "__main__":
    sys.exit(main())
