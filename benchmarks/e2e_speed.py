"""End-to-end speed: whole models compiled with bitlower vs Inductor (same model, SDPA), H100, bf16.

Question: how much of the kernel speed-up reaches whole ViT / DiT models, for inference and for a
training step, and what does the bitlower backend cost in compile time?

Tables (``--table``, one process per table; ``--rows`` takes any subset of ``ROWS`` instead):
- ``infer``: forward throughput under ``torch.no_grad``: ViT-S/16 224 (B 256), ViT-S/8 320 (B 32),
  ViT-B/16 1024 (B 4), DiT-XL/2 256 and 512 (latents 32 and 64, B 16).
- ``train``: forward + backward + fused AdamW step, bitlower backend option ``grad_mode`` =
  ``hamming`` and ``ste``: ViT-S/8 320 (B 32), DiT-B/2 512 (B 16); peak memory beside time. The
  Inductor side does not depend on ``grad_mode``: it is measured once per model and shared by both rows.
- ``compile``: inference first-call wall time (Dynamo + AOTAutograd + Inductor + Triton + one run) of ViT-B/16
  1024, each backend in its own fresh process with empty ``TORCHINDUCTOR_CACHE_DIR`` and
  ``TRITON_CACHE_DIR`` (cold caches: the other backend's kernels and earlier runs cannot be reused).

Method: the same model (float32 weights, ``torch.autocast`` bf16 for both backends) is compiled with
``torch.compile(model, backend="inductor")`` and ``backend="bitlower"`` (default mode, no CUDA graphs; ``--cudagraphs``:
both with Inductor's CUDA graphs, ``mode="reduce-overhead"``'s option, so Python launch time leaves the step).
Time is the median of ``triton.testing.do_bench`` (event timing, no CUDA graphs, so Python launch
overhead is inside both rows alike), at least ``MIN_REPS`` calls after warm-up and compile. Inputs are
random (``randn`` images/latents, timesteps in [1, 1000), random labels) and every parameter the
initialisation leaves all-zero (DiT's adaLN-Zero and final layer) is re-drawn from N(0, 0.02), so no
branch computes on zeros. Speed-up = inductor ms / bitlower ms (> 1: bitlower faster). Each bitlower
result records the attention sites the backend rewrote (``bitlower.counters["sites_rewritten"]``,
beside the model's attention-module count) and any fallback from the fused kernels to the reference
(``bitlower.counters["fallback"]`` by reason); a row that fell back says FALLBACK in the table.
Models and optimizers are freed (``torch._dynamo.reset``, ``gc``, ``empty_cache``) between backends.

Outputs in ``--out`` (default ``$OUT``, else ``runs/``), stem ``e2e_speed_<table>`` (``_rows`` for
``--rows``, ``_tiny`` appended in tiny mode): ``.jsonl`` (a meta line, then one line per row as soon as
it is measured), ``.md`` (GPU, torch/Triton versions, command line, tables) and ``.png`` (speed-up bars;
skipped with a warning without matplotlib); md and png are rewritten after every row, so a run cut
short keeps what it measured. On CUDA the main process runs with Inductor's FX-graph and AOTAutograd
caches off: the fallback counter is bumped while Inductor traces the operator, which a cache hit skips.

Predicted wall time on one H100 (16 CPU cores, cold caches), from model sizes and published Inductor
compile latencies, not yet measured (``PREDICTED_S`` per row; each row's ``first_call_s`` and
``wall_s`` calibrate them on the first run):
- ``--table infer``: about 6.5 min (10 forward compiles ~5 min, DiT-XL's 28 blocks the largest; ~20 s
  timing; steps 5-50 ms).
- ``--table train``: about 6 min (6 forward+backward compiles ~5 min; steps 30-100 ms).
- ``--table compile``: about 2 min (two fresh processes: ~10 s import, ~30-40 s compile each).
All three (~15 min) do not fit one 10-minute call: run one table per call, in this order:

    python benchmarks/e2e_speed.py --table infer --out $OUT
    python benchmarks/e2e_speed.py --table train --out $OUT
    python benchmarks/e2e_speed.py --table compile --out $OUT

``--budget-s`` (default 540 on a full CUDA run) keeps a call inside its limit if the predictions are
low: a row is not started when elapsed time + its prediction (scaled up by how far the finished rows
overran theirs) would pass the budget; the md then names the rows not run and the command for them.

CPU smoke run (tiny models: depth 1, width 32, 16 px; 3 timed calls with ``time.perf_counter``;
numbers meaningless, every code path exercised):
``python benchmarks/e2e_speed.py --device cpu --tiny --table infer --out /tmp/e2e``.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bitlower.backend_config import BackendConfig
from bitlower.counters import counters
from bitlower.models import DiT, dit_config, vit_base, vit_small
from bitlower.models.attention import Attention
from e2e_report import write_md, write_png  # beside this script (its folder is on sys.path)

log = logging.getLogger("e2e_speed")

BACKENDS = ("inductor", "bitlower")
MIN_REPS = 20  # do_bench gets rep >= MIN_REPS step times: a median of at least 20 calls per number
CPU_REPS = 3  # tiny CPU mode: timed calls per number (the numbers only show that the path runs)
CHILD_PREFIX = "E2E_CHILD_RESULT "  # the line a compile-row child prints its JSON result on


@dataclass(frozen=True)
class ModelSpec:
    """A model of the issue's rows: ``res`` is the image side (ViT) or latent side (DiT, image / 8)."""

    label: str
    family: str  # "vit" or "dit"
    size: str  # "S"/"B" (ViT) or a ``dit_config`` size
    patch: int
    res: int
    batch: int

    def build(self, tiny: bool) -> torch.nn.Module:
        """The real constructor (``vit_small``/``vit_base``/``DiT(dit_config(...))``); tiny: depth 1, width 32."""
        if self.family == "vit":
            shape = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=10) if tiny \
                else dict(img_size=self.res, patch_size=self.patch)
            return {"S": vit_small, "B": vit_base}[self.size](**shape)
        shape = dict(input_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=10) if tiny \
            else dict(input_size=self.res)
        return DiT(dit_config(self.size, self.patch, **shape))


MODELS = {
    "vit_s16_224": ModelSpec("ViT-S/16 224", "vit", "S", 16, 224, 256),
    "vit_s8_320": ModelSpec("ViT-S/8 320", "vit", "S", 8, 320, 32),
    "vit_b16_1024": ModelSpec("ViT-B/16 1024", "vit", "B", 16, 1024, 4),
    "dit_xl2_256": ModelSpec("DiT-XL/2 256", "dit", "XL", 2, 32, 16),
    "dit_xl2_512": ModelSpec("DiT-XL/2 512", "dit", "XL", 2, 64, 16),
    "dit_b2_512": ModelSpec("DiT-B/2 512", "dit", "B", 2, 64, 16),
}
TABLES = {
    "infer": [f"infer:{m}" for m in ("vit_s16_224", "vit_s8_320", "vit_b16_1024", "dit_xl2_256", "dit_xl2_512")],
    "train": [f"train:{m}:{g}" for m in ("vit_s8_320", "dit_b2_512") for g in ("hamming", "ste")],
    "compile": ["compile:vit_b16_1024"],
}
ROWS = [row for rows in TABLES.values() for row in rows]
# Predicted H100 seconds per row, compiles included (see the docstring); the budget check uses them.
# A train row's second grad mode reuses the Inductor result, hence the smaller number.
PREDICTED_S = {"infer:vit_s16_224": 55, "infer:vit_s8_320": 55, "infer:vit_b16_1024": 65,
               "infer:dit_xl2_256": 100, "infer:dit_xl2_512": 105,
               "train:vit_s8_320:hamming": 120, "train:vit_s8_320:ste": 55,
               "train:dit_b2_512:hamming": 125, "train:dit_b2_512:ste": 60, "compile:vit_b16_1024": 100}


@dataclass(frozen=True)
class Row:
    """One row: ``kind:model[:grad_mode]``."""

    name: str
    kind: str  # "infer", "train" or "compile"
    model: str
    grad_mode: str | None = None

    @classmethod
    def parse(cls, name: str) -> "Row":
        """Raises: ValueError for an unknown kind, model or grad mode."""
        kind, model, *rest = name.split(":") + [""]
        grad_mode = rest[0] or None
        if kind not in TABLES or model not in MODELS or (grad_mode is None) != (kind != "train") or len(rest) > 2:
            raise ValueError(f"bad row {name!r}: rows are infer:<model>, train:<model>:<grad_mode>, "
                             f"compile:<model> with models {sorted(MODELS)}")
        if grad_mode is not None:
            BackendConfig(grad_mode=grad_mode)  # the backend option of that name; raises on an unknown mode
        return cls(name, kind, model, grad_mode)


@dataclass(frozen=True)
class Ctx:
    device: torch.device
    tiny: bool
    kernel_options: str = ""  # the bitlower backend's kernel_options for every bitlower row ("": the plan's own)
    cudagraphs: bool = False  # both backends with Inductor's CUDA graphs (``triton.cudagraphs``, reduce-overhead's)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def build(spec: ModelSpec, ctx: Ctx, train: bool):
    """Model on the device (seeded, no all-zero parameter) and its random inputs; (model, inputs, batch)."""
    torch.manual_seed(0)
    with ctx.device:  # parameters are created (and initialised) on the device: DiT-XL in seconds, not a minute
        model = spec.build(ctx.tiny)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # adaLN-Zero gates, zero-initialised final layer, biases
                p.normal_(0.0, 0.02)
    batch = 2 if ctx.tiny else spec.batch
    gen = torch.Generator(device=ctx.device).manual_seed(1)
    rand = dict(device=ctx.device, generator=gen)
    if isinstance(model, DiT):
        cfg = model.config
        side = model.x_embedder.grid_size[0] * cfg.patch_size
        inputs = (torch.randn(batch, cfg.in_channels, side, side, **rand),  # (B, Cin, H, W) latents
                  torch.randint(1, 1000, (batch,), **rand),  # timesteps
                  torch.randint(0, cfg.num_classes, (batch,), **rand))  # labels
    else:
        cfg = model.config
        side = model.grid_size[0] * model.patch_embed.proj.kernel_size[0]
        inputs = (torch.randn(batch, cfg.in_chans, side, side, **rand),)  # (B, 3, H, W)
    return model.train(train), inputs, batch


def make_step(kind: str, fn, model, inputs, ctx: Ctx):
    """One inference call or one training step (bf16 autocast, loss = mean square of the output)."""
    dtype = torch.bfloat16
    if kind != "train":
        def infer():
            if ctx.cudagraphs:  # each call a new step of the graph trees: the last call's outputs are not kept
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad(), torch.autocast(ctx.device.type, dtype=dtype):
                fn(*inputs)
        return infer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast(ctx.device.type, dtype=dtype):
            loss = fn(*inputs).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_ms(step, ctx: Ctx) -> float:
    """Median ms per call: ``triton.testing.do_bench`` on CUDA, ``perf_counter`` over CPU_REPS calls on CPU."""
    if not ctx.cuda:
        times = []
        for _ in range(CPU_REPS):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3
    from triton.testing import do_bench

    start = time.perf_counter()
    step()
    ctx.sync()
    est_ms = (time.perf_counter() - start) * 1e3  # do_bench's warmup/rep are ms: ask for >= MIN_REPS calls
    return float(do_bench(step, warmup=max(100.0, 3 * est_ms), rep=max(500.0, MIN_REPS * est_ms),
                          return_mode="median"))


GROUPS = ("sites_found", "sites_rewritten", "sites_skipped", "fallback")


def _snapshot():
    return {g: dict(counters[g]) for g in GROUPS}, dict(torch._dynamo.utils.counters["graph_break"])


def _delta(before) -> dict:
    """What the bitlower counters and Dynamo's graph-break counter gained since ``before``."""
    ours, breaks = before
    gained = {g: {k: n - ours[g].get(k, 0) for k, n in counters[g].items() if n > ours[g].get(k, 0)} for g in GROUPS}
    now = torch._dynamo.utils.counters["graph_break"]
    return {"sites_found": sum(gained["sites_found"].values()),
            "sites_rewritten": sum(gained["sites_rewritten"].values()),
            "sites_skipped": gained["sites_skipped"], "fallback": gained["fallback"],
            "graph_breaks": sum(max(n - breaks.get(k, 0), 0) for k, n in now.items())}


def measure(row: Row, backend: str, ctx: Ctx, timed: bool = True) -> dict:
    """Build, compile, time the first call (compile included), then the median step and peak memory."""
    spec = MODELS[row.model]
    model, inputs, batch = build(spec, ctx, train=row.kind == "train")
    torch._dynamo.reset()
    before = _snapshot()
    options = {"triton.cudagraphs": True} if ctx.cudagraphs else {}
    if backend == "bitlower":
        options.update({"grad_mode": row.grad_mode} if row.grad_mode else {})
        options.update({"kernel_options": ctx.kernel_options} if ctx.kernel_options else {})
    options = options or None
    fn = torch.compile(model, backend=backend, options=options)
    step = make_step(row.kind, fn, model, inputs, ctx)
    ctx.sync()
    start = time.perf_counter()
    step()  # compiles (the backward and AdamW's state too, for a training step)
    ctx.sync()
    res = {"first_call_s": time.perf_counter() - start, "options": options}
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    if timed:
        ms = time_ms(step, ctx)
        res.update(ms=ms, images_per_s=batch * 1e3 / ms)
    else:  # compile row: the second call, to tell compile from run time
        start = time.perf_counter()
        step()
        ctx.sync()
        res["second_call_s"] = time.perf_counter() - start
    res["peak_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.cuda else None
    res.update(_delta(before))
    res["attention_modules"] = sum(isinstance(m, Attention) for m in model.modules())
    if backend == "bitlower":
        res["path"] = describe_path(res, ctx)
    else:
        for key in ("sites_found", "sites_rewritten", "sites_skipped", "fallback"):
            res.pop(key)
    log.info("%s %s: first call %.1f s, %s", row.name, backend, res["first_call_s"],
             f"{res['ms']:.3f} ms" if timed else f"second call {res['second_call_s']:.3f} s")
    return res


def describe_path(res: dict, ctx: Ctx) -> str:
    """``fused kernels``, ``FALLBACK to reference (...)``, ``reference (CPU)``, plus a partial-rewrite note."""
    if res["fallback"]:
        path = "FALLBACK to reference (" + "; ".join(f"{r}: {n}" for r, n in res["fallback"].items()) + ")"
    else:
        path = "fused kernels" if ctx.cuda else "reference (CPU)"
    if res["sites_rewritten"] < res["attention_modules"]:
        path += f"; only {res['sites_rewritten']} of {res['attention_modules']} attention sites rewritten"
    return path


def free_memory(ctx: Ctx) -> None:
    torch._dynamo.reset()
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
        log.info("allocated after freeing: %.2f GiB", torch.cuda.memory_allocated(ctx.device) / 2**30)


def compile_child(row: Row, backend: str, ctx: Ctx) -> dict:
    """Run ``measure(timed=False)`` for one backend in a fresh process with empty compile caches."""
    with tempfile.TemporaryDirectory(prefix="e2e_cold_") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
               "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        cmd = [sys.executable, os.path.abspath(__file__), "--compile-child", backend, "--rows", row.name,
               "--device", ctx.device.type, "--kernel-options", ctx.kernel_options] + (["--tiny"] if ctx.tiny else [])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_PREFIX)]
    if proc.returncode or not lines:
        raise RuntimeError(f"compile child for {backend} exited {proc.returncode} without a result")
    return json.loads(lines[-1][len(CHILD_PREFIX):])


def run_row(row: Row, ctx: Ctx, shared: dict) -> dict:
    """Both backends on one row; ``shared`` keeps the Inductor training result per model (mode-independent)."""
    spec = MODELS[row.model]
    result = {"row": row.name, "table": row.kind, "model": spec.label + (" (tiny)" if ctx.tiny else ""),
              "batch": 2 if ctx.tiny else spec.batch, "grad_mode": row.grad_mode}
    for backend in BACKENDS:
        try:
            if row.kind == "compile":
                result[backend] = compile_child(row, backend, ctx)
            elif backend == "inductor" and row.kind == "train" and row.model in shared:
                result[backend] = {**shared[row.model], "shared_with": shared[row.model]["row"]}
            else:
                result[backend] = measure(row, backend, ctx)
        except Exception as err:  # noqa: BLE001 - OOM, compile error: said in the row, the other backend still runs
            log.exception("%s %s failed", row.name, backend)
            result[backend] = {"error": f"{type(err).__name__}: {err}"[:300].replace("\n", " ")}
            result.setdefault("error", f"{backend}: {result[backend]['error']}")
        free_memory(ctx)
        if backend == "inductor" and row.kind == "train" and "error" not in result[backend]:
            shared.setdefault(row.model, {**result[backend], "row": row.name})
    if "error" not in result:
        key = "first_call_s" if row.kind == "compile" else "ms"
        result["ratio"] = result["inductor"][key] / result["bitlower"][key]
    return result


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", choices=sorted(TABLES), help="one table's rows (one process per table)")
    which.add_argument("--rows", nargs="+", help=f"a custom subset of {ROWS}")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs"), help="output folder (default $OUT or runs/)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny models (depth 1, width 32, 16 px): a smoke run")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no row whose predicted time would end past this (default 540 on a full CUDA "
                             "run, none otherwise)")
    parser.add_argument("--kernel-options", default="", help='bitlower backend kernel_options for every bitlower '
                        'row, e.g. "forward=hopper" (the Gluon sm_90 forward); default: the kernel plan\'s choice')
    parser.add_argument("--cudagraphs", action="store_true", help="both backends with Inductor's CUDA graphs "
                        "(option triton.cudagraphs, as mode='reduce-overhead'): host time off the critical path; "
                        "infer rows only")
    parser.add_argument("--compile-child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.rows = [Row.parse(r) for r in (TABLES[args.table] if args.table else args.rows)]
    except ValueError as err:
        parser.error(str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --tiny for a smoke run)")
    try:
        BackendConfig(kernel_options=args.kernel_options)
    except ValueError as err:
        parser.error(str(err))
    if args.cudagraphs and any(row.kind != "infer" for row in args.rows):
        parser.error("--cudagraphs takes infer rows only (a training step's AdamW runs outside the graphs)")
    if args.budget_s is None:
        args.budget_s = 540.0 if args.device == "cuda" and not args.tiny else float("inf")
    return args


def environment(ctx: Ctx, argv, out: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"device": torch.cuda.get_device_name(ctx.device) if ctx.cuda else f"CPU {platform.machine()}",
            "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "tiny": ctx.tiny, "out": out,
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv))}


def configure(ctx: Ctx, child: bool) -> None:
    """Process-wide settings of a run: threads, Inductor caches, log volume."""
    logging.getLogger("bitlower.passes").setLevel(logging.WARNING)  # one line per rewritten site; counted instead
    if ctx.tiny and not ctx.cuda:
        torch.set_num_threads(1)  # tiny models gain nothing from threads; a busy 2-core machine stalls with two
        # Scalar C++ kernels: a cold compile of the tiny ViT training step took 11-14 s instead of 27-35 s
        # (2-core CPU, load ~3); the tiny numbers are meaningless either way, both backends get the same.
        torch._inductor.config.cpp.vec_isa_ok = False
    if ctx.cuda and not child:  # a compile child starts with empty cache folders: caches stay on, as for a user
        # The fused-kernel-or-reference choice runs while Inductor traces the operator; a cache hit skips that
        # trace and with it counters["fallback"] (CPU check: 2 operator-body calls on a cold compile, 0 warm).
        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False


def run_rows(args, ctx: Ctx, stem: Path, meta: dict) -> tuple[list[dict], list[str]]:
    """Every row in order, its json line, md and png written as soon as it is measured."""
    results, not_run, shared, start, predicted_done = [], [], {}, time.monotonic(), 0.0
    for row in args.rows:
        elapsed = time.monotonic() - start
        slowdown = max(1.0, elapsed / predicted_done) if predicted_done else 1.0  # predictions too low so far
        predicted = 0.0 if ctx.tiny or not ctx.cuda else PREDICTED_S.get(row.name, 120) * slowdown
        if elapsed + predicted > args.budget_s:
            log.warning("%s not started: predicted %.0f s would pass --budget-s %.0f", row.name, predicted,
                        args.budget_s)
            not_run.append(row.name)
            continue
        predicted_done += PREDICTED_S.get(row.name, 120)
        result = run_row(row, ctx, shared)
        result["wall_s"] = round(time.monotonic() - start, 1)
        results.append(result)
        with stem.with_suffix(".jsonl").open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        write_md(stem.with_suffix(".md"), meta, results, not_run)
        write_png(stem.with_suffix(".png"), meta, results)
    return results, not_run


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ctx = Ctx(torch.device(args.device), args.tiny, args.kernel_options, args.cudagraphs)
    configure(ctx, child=bool(args.compile_child))
    if args.compile_child:
        print(CHILD_PREFIX + json.dumps(measure(args.rows[0], args.compile_child, ctx, timed=False)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"e2e_speed_{args.table or 'rows'}" + ("_cudagraphs" if args.cudagraphs else "")
                  + ("_tiny" if args.tiny else ""))
    meta = environment(ctx, argv, str(out))
    log.info("%s; torch %s, Triton %s", meta["device"], meta["torch"], meta["triton"])
    stem.with_suffix(".jsonl").write_text(json.dumps({"meta": meta}) + "\n")
    start = time.monotonic()
    results, not_run = run_rows(args, ctx, stem, meta)
    print(write_md(stem.with_suffix(".md"), meta, results, not_run), flush=True)  # the product: tables, last
    log.info("wrote %s.{jsonl,md,png}; %.0f s wall", stem, time.monotonic() - start)


if __name__ == "__main__":
    main()
