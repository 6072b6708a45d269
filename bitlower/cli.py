"""The ``bitlower`` command: ``demo``, ``train``, ``bench`` and ``explain``.

Every subcommand has ``--help``. A bad argument (unknown model, missing data path, unknown
preset, a checkpoint that does not fit) ends the command with exit status 2 and one line on
stderr, ``bitlower <command>: error: <reason>``. Output meant for the reader is printed here and
only here; the library logs through ``logging`` (``-v`` shows INFO records).
"""
from __future__ import annotations

import argparse
import ast
import logging
import subprocess
import sys
from pathlib import Path

import torch

from bitlower.runtime.checkpoint import CheckpointError

log = logging.getLogger(__name__)

USAGE_ERROR = 2  # exit status of a bad argument (argparse's convention)
DEFAULT_MODEL = "vit_tiny_patch8"
# Digits are 8x8; `train` upsamples them to 32 so that the default patch-8 ViT sees a 4x4 grid.
DEFAULT_IMAGE_SIZES = {"digits": 32}
BENCH_SCRIPT = Path("benchmarks") / "attention.py"
# Datasets up to this size (as float32) are converted once into tensors: per-item conversion
# made a digits training step of a small ViT take ~600 ms instead of ~45 ms (measured, 2-core CPU).
# CIFAR-10's train split is 614 MB as float32.
TENSOR_DATA_MAX_BYTES = 1 << 30


class UsageError(Exception):
    """A bad command-line argument, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE a Python literal (``2``, ``0.5``, ``True``, ``(4, 4)``) or a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _shape(text: str) -> tuple[int, int, int, int]:
    """``B,H,N,D`` -> a tuple of four positive ints."""
    try:
        shape = tuple(int(x) for x in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected B,H,N,D (four positive ints), got {text!r}")
    return shape


# ---------------------------------------------------------------- demo

def _cmd_demo(args) -> int:
    from bitlower.demo import DemoConfig, run_demo
    from bitlower.demo_report import format_summary

    changes = {k: v for k, v in dict(fp_steps=args.fp_steps, qat_steps=args.qat_steps, seed=args.seed,
                                     device=args.device, threads=args.threads).items() if v is not None}
    if args.threads == 0:
        changes["threads"] = None  # torch's own setting
    changes["progress"] = not args.no_progress
    config = DemoConfig.quick(**changes) if args.quick else DemoConfig(**changes)
    results = run_demo(config, args.out)
    print(format_summary(results))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="train, binarize and QAT+distill a small ViT on bundled digits; time attention",
        description="The main job on the embedded digits data: trains a small full-precision ViT, binarizes "
                    "it after training (mean_abs weighting, no training) and reports its accuracy, QAT+distills "
                    "it (BinaryAttention preset, hard distillation from the full-precision model) and reports "
                    "its accuracy, then times attention (CUDA: fused kernels vs SDPA; CPU: the compiled "
                    "reference vs SDPA). Prints a summary table; writes demo.json and demo_curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="seconds-long settings (one block, a few steps) for tests")
    p.add_argument("--fp-steps", type=int, default=None, help="full-precision training steps (default: 600; quick: 6)")
    p.add_argument("--qat-steps", type=int, default=None, help="QAT steps (default: 400; quick: 4)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads while the demo runs; 0 keeps torch's setting (default: 1, see DemoConfig)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------- models and data (train, explain)

# Config fields that the data decides, by model family (registry name prefix; "" = the rest).
DATA_FIELDS = {"dit_": ("input_size", "in_channels", "num_classes"), "": ("img_size", "in_chans", "num_classes")}
TASKS = {"dit_": "diffusion", "": "classification"}


def _family(name: str) -> str:
    return next(prefix for prefix in DATA_FIELDS if name.startswith(prefix))


def _check_model_name(name: str) -> None:
    from bitlower.models import create_model, list_models

    if name not in list_models():
        create_model(name)  # raises KeyError naming the closest registered names


def _model(name: str, model_args: list, data_values: tuple | None = None):
    """``create_model(name, ...)``: data-decided fields first, then ``--model-arg`` overrides."""
    from bitlower.models import create_model

    _check_model_name(name)
    overrides = dict(zip(DATA_FIELDS[_family(name)], data_values)) if data_values else {}
    overrides.update(dict(model_args))
    try:
        return create_model(name, **overrides)
    except TypeError as err:  # an unknown config field from --model-arg
        raise UsageError(f"model {name!r}: {err}") from err


def _example_inputs(model, batch: int) -> tuple:
    """One call's inputs: images (B, C, H, W), plus timesteps and labels (B,) for a DiT."""
    cfg = model.config
    if hasattr(cfg, "in_channels"):  # DiT: model(x, t, y)
        size = cfg.input_size if isinstance(cfg.input_size, tuple) else (cfg.input_size, cfg.input_size)
        zeros = torch.zeros(batch, dtype=torch.long)
        return torch.randn(batch, cfg.in_channels, *size), zeros, zeros
    size = cfg.img_size if isinstance(cfg.img_size, tuple) else (cfg.img_size, cfg.img_size)
    return (torch.randn(batch, cfg.in_chans, *size),)


def _datasets(spec: str, image_size: int | None):
    """Train and test splits of ``spec`` as tensor datasets (batches index in one call)."""
    from torch.utils.data import TensorDataset

    from bitlower.models import load_dataset

    kind, sep, path = spec.partition(":")
    folder = Path(path if sep and kind in ("cifar10", "cifar100", "imagefolder") else spec)
    if spec != "digits" and not folder.exists():
        raise UsageError(f"data path not found: {folder}")
    size = image_size if image_size is not None else DEFAULT_IMAGE_SIZES.get(spec)
    splits = []
    for split in ("train", "test"):
        ds = load_dataset(spec, split, size)
        x, _ = ds[0]
        in_memory = callable(getattr(ds, "tensors", None))  # image folders read files per item
        if in_memory and len(ds) * x.numel() * x.element_size() <= TENSOR_DATA_MAX_BYTES:
            splits.append((TensorDataset(*ds.tensors()), ds))
        else:  # too large to hold as float32: items are converted per batch
            splits.append((ds, ds))
    return splits


def _add_model_args(p, model_help: str) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{model_help} (names: python -c 'import "
                   "bitlower.models as m; print(m.list_models())')")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side; default: the data's own size (digits: 32, upsampled from 8)")
    p.add_argument("--model-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. depth=2 embed_dim=64 patch_size=4")


# ---------------------------------------------------------------- train

def _binarize_config(args):
    from bitlower.runtime import PRESETS, preset

    if args.preset == "none":
        return None
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; presets: none, {', '.join(sorted(PRESETS))}")
    return preset(args.preset)


def _load_init(model, path: str) -> None:
    from bitlower.runtime import read_checkpoint

    try:
        model.load_state_dict(read_checkpoint(path)["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UsageError(f"--init {path} does not fit this full-precision model: {first}") from err


def _resume_path(args) -> str | None:
    if args.resume is None:
        return None
    path = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from: {path}")
    return str(path)


def _cmd_train(args) -> int:
    from bitlower.runtime import DiffusionConfig, DistillConfig, TrainConfig, binarize_, train_classifier, train_diffusion

    _check_model_name(args.model)
    task = TASKS[_family(args.model)]
    binarize = _binarize_config(args)  # the cheap checks first: names and paths
    resume = _resume_path(args)
    if args.init and not Path(args.init).is_file():
        raise UsageError(f"--init checkpoint not found: {args.init}")
    (train, full), (test, _) = _datasets(args.data, args.image_size)
    torch.manual_seed(args.seed)  # model initialisation; the trainer seeds the rest
    model = _model(args.model, args.model_arg, (full.image_size, full.in_chans, full.num_classes))
    if args.init:
        _load_init(model, args.init)
    distill = args.distill if args.distill != "auto" else ("hard" if args.init and binarize else "none")
    teacher = None
    if binarize is not None:
        teacher = binarize_(model, binarize).teacher
    if distill != "none" and teacher is None:
        raise UsageError("--distill needs a binarized model (--preset) started from --init full-precision weights")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                         seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         log_every=args.log_every,
                         out_dir=args.out, progress=not args.no_progress, device=args.device,
                         compile_backend=args.compile_backend)
    extra = {"model": args.model, "model_args": [[k, repr(v)] for k, v in args.model_arg], "data": args.data,
             "image_size": list(full.image_size), "preset": args.preset,
             "binarize": None if binarize is None else binarize.to_dict(), "init": args.init}
    common = dict(eval_set=test, extra_config=extra, resume=resume, stop_at=args.stop_after,
                  teacher=teacher if distill != "none" else None)
    if task == "diffusion":
        metrics = train_diffusion(model, train, config, diffusion=DiffusionConfig(distill_alpha=args.distill_alpha),
                                  **common)
    else:
        metrics = train_classifier(model, train, config, distill=DistillConfig(distill, args.distill_alpha), **common)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{task} {args.model} ({args.preset}) on {args.data}: {shown}")
    print(f"checkpoint {Path(args.out) / 'checkpoint.pt'}, metrics {Path(args.out) / 'metrics.jsonl'}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a registered model (classification, or diffusion for DiT), binary or full precision",
        description="Trains any registered model: classifiers (ViT/DeiT, pixel transformer) with cross-entropy, "
                    "DiT with the DDPM noise-prediction loss. --preset binarizes the attention first (QAT); "
                    "--init starts from a full-precision checkpoint of this command (--preset none), which "
                    "then is the distillation teacher. Writes checkpoint.pt and metrics.jsonl into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_args(p, "registered model name; dit_* models train as diffusion")
    p.add_argument("--data", default="digits",
                   help="'digits' (bundled), 'cifar10:<path>', 'cifar100:<path>', 'imagefolder:<path>' or a folder")
    p.add_argument("--preset", default="binary_attention",
                   help="binarization preset (binary_attention, hamming, hamming_g, hamming_b, sign_ste, "
                        "sign_stopgrad) or 'none' for full precision")
    p.add_argument("--init", default=None, help="full-precision checkpoint to start from (and distill from)")
    p.add_argument("--distill", choices=("auto", "none", "hard", "soft"), default="auto",
                   help="distillation from the --init model; auto: hard with --init and a preset, else none; "
                        "diffusion distills by MSE to the teacher's prediction for any kind but none")
    p.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the distillation term")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of the whole run")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (warmup + cosine)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end only)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: at the end only)")
    p.add_argument("--log-every", type=int, default=10, help="write the training loss to metrics.jsonl every N steps")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this step, writing a checkpoint; continue later with --resume")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (without a value: <out>/checkpoint.pt)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend of the training model, e.g. bitlower")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: CUDA when available)")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------- bench

def _source_root() -> Path:
    """The repository root when bitlower runs from a source tree (editable install)."""
    return Path(__file__).resolve().parent.parent


def _cmd_bench(args) -> int:
    from bitlower.demo_timing import describe_measurement, format_timing, time_attention

    script = _source_root() / BENCH_SCRIPT
    has_cuda = torch.cuda.is_available() and args.device != "cpu"
    if script.is_file() and has_cuda:
        command = [sys.executable, str(script), "--out", args.out]
        if args.suite_shapes:
            command += ["--shapes", args.suite_shapes]
        print("running " + " ".join(command))
        return subprocess.call(command)
    if not script.is_file():
        print(f"{BENCH_SCRIPT} is not here (bitlower runs from an installed package, not a source tree): "
              "the benchmark suite needs a source checkout and a CUDA GPU.")
    else:
        print(f"{script} times the fused CUDA kernels and needs a CUDA GPU; "
              f"{'none is available' if not torch.cuda.is_available() else '--device cpu was asked'}.")
    print("Available here: the attention timing of `bitlower demo` (below).")
    device = torch.device("cuda" if has_cuda else "cpu")
    rows = time_attention(args.shape or None, device, repeats=args.repeats)
    print(format_timing(describe_measurement(device, args.repeats), [r.to_dict() for r in rows]))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the attention benchmark suite (CUDA), or the CPU timing where there is no GPU",
        description=f"With a CUDA GPU and a source tree, runs {BENCH_SCRIPT} (binary attention vs SDPA, "
                    "FlexAttention and others; writes attention.json/.md into --out). Otherwise says why "
                    "not and runs the timing of `bitlower demo`: the compiled reference vs SDPA on CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/bench", help="output folder of the benchmark suite")
    p.add_argument("--suite-shapes", default=None, help="benchmark suite: comma-separated indices into its SHAPES")
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="B,H,N,D",
                   help="CPU timing shape, repeatable (default: the demo's shapes)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per CPU measurement")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: CUDA when available)")
    p.set_defaults(func=_cmd_bench)


# ---------------------------------------------------------------- explain

def _cmd_explain(args) -> int:
    from bitlower.backend import split_options
    from bitlower.explain import explain

    split_options(dict(args.option))  # an unknown or invalid option fails before the model is built
    model_args = list(args.model_arg)
    if args.image_size is not None:
        model_args.insert(0, (DATA_FIELDS[_family(args.model)][0], args.image_size))
    model = _model(args.model, model_args)
    model.train(args.train_mode)
    report = explain(model, *_example_inputs(model, args.batch), options=dict(args.option))
    print(f"{args.model}: attention sites under torch.compile(backend='bitlower')")
    print(report)
    return 0


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="list every attention site of a model and whether the backend rewrites it",
        description="Traces one call of a registered model (random inputs) and lists each attention site with "
                    "its module path, its pattern and whether torch.compile(backend='bitlower') rewrites it to "
                    "binary attention; skipped sites give the reason.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_args(p, "registered model name")
    p.set_defaults(model="vit_tiny_patch16_224")
    p.add_argument("--batch", type=int, default=1, help="batch of the example inputs")
    p.add_argument("--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable, e.g. min_seq_len=64 or skip=('blocks.0.*',)")
    p.add_argument("--train-mode", action="store_true", help="trace in training mode (default: eval)")
    p.set_defaults(func=_cmd_explain)


# ---------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    """The ``bitlower`` argument parser with its four subcommands."""
    parser = _Parser(prog="bitlower", description="bitlower: 1-bit query/key attention for vision and diffusion "
                     "transformers. Start with `bitlower demo`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO records (default: warnings only)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,bench,explain}",
                                parser_class=_Parser)
    for add in (_add_demo, _add_train, _add_bench, _add_explain):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``bitlower`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Example:
        >>> main(["explain", "--model", "vit_tiny_patch16_224", "--model-arg", "depth=1"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    prog = f"bitlower {args.command}"
    try:
        return args.func(args)
    except (UsageError, CheckpointError, FileNotFoundError) as err:
        message = str(err)
    except (KeyError, ValueError) as err:  # library argument checks: unknown names, bad values
        message = str(err.args[0]) if err.args else type(err).__name__
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
