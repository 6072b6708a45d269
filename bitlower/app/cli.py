"""The ``bitlower`` command: ``demo``, ``train``, ``export``, ``bench``, ``explain`` and ``sample3d``.

Every subcommand has ``--help``. A bad argument (unknown model, missing data path, unknown
preset, a checkpoint that does not fit) ends the command with exit status 2 and one line on
stderr, ``bitlower <command>: error: <reason>``. Output meant for the reader is printed here and
only here; the library logs through ``logging`` (``-v`` shows INFO records).
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

import bitlower
from bitlower.runtime.checkpoint import CheckpointError

from .arguments import HelpFormatter, UsageError, device, key_value, non_negative_int, positive_int, writable_folder
from .cli_train import add_train_parser
from .export import add_export_parser
from .model_args import add_model_args, build_model, example_inputs, print_models
from .run_folder import saved_defaults
from .sample3d import add_sample3d_parser
from .train_tasks import get_train_task, task_for_model

log = logging.getLogger(__name__)

USAGE_ERROR = 2  # exit status of a bad argument (argparse's convention)
BENCH_SUITE = "benchmarks/attention.py"  # in a source checkout; not part of the installed package


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    from bitlower.app.demo import DemoConfig, run_demo
    from bitlower.app.demo_report import format_summary

    changes = {k: v for k, v in dict(fp_steps=args.fp_steps, qat_steps=args.qat_steps, seed=args.seed,
                                     device=args.device, threads=args.threads).items() if v is not None}
    if args.threads == 0:
        changes["threads"] = None  # torch's own setting
    changes["progress"] = not args.no_progress
    config = DemoConfig.quick(**changes) if args.quick else DemoConfig(**changes)
    results = run_demo(config, writable_folder(args.out))
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
        formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="seconds-long settings (one block, a few steps) for tests")
    p.add_argument("--fp-steps", type=positive_int, default=None, help="full-precision training steps (default: 600; quick: 6)")
    p.add_argument("--qat-steps", type=positive_int, default=None, help="QAT steps (default: 400; quick: 4)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=non_negative_int, default=None, help="CPU threads while the demo runs; 0 keeps torch's setting (default: 1, see DemoConfig)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_cmd_demo)


# ---------------------------------------------------------------- bench

def _cmd_bench(args) -> int:
    from bitlower.app.demo_timing import describe_measurement, format_timing, time_attention

    device_ = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"The full benchmark suite ({BENCH_SUITE}: binary attention vs SDPA, FlexAttention and others, "
          "tables and plots) needs a source checkout of bitlower and a CUDA GPU: run it there with "
          f"`python {BENCH_SUITE} --out DIR`. Here: the attention timing shipped with the package.")
    rows = time_attention(args.shape or None, device_, repeats=args.repeats)
    print(format_timing(describe_measurement(device_, args.repeats), [r.to_dict() for r in rows]))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="time binary attention against SDPA (the timing of `bitlower demo`)",
        description="Times binary attention against SDPA at a few shapes: on CUDA the fused kernels, on CPU "
                    f"the compiled exact reference. The full suite is {BENCH_SUITE} in a source checkout.",
        formatter_class=HelpFormatter)
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="B,H,N,D",
                   help="timing shape, repeatable (default: the demo's shapes)")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed calls per CPU measurement")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_bench)


# ---------------------------------------------------------------- explain

def attention_modules_without_sites(model: torch.nn.Module, sites) -> list[tuple[str, str]]:
    """``(path, type name)`` of attention-like modules (the runtime's heuristic) under which the
    traced graph had no attention site: attention the backend did not find, so not rewritten."""
    from bitlower.runtime.transform import looks_like_attention

    paths = [s.module_path for s in sites]
    return [(name, type(module).__name__) for name, module in model.named_modules()
            if name and looks_like_attention(module)
            and not any(p == name or p.startswith(name + ".") for p in paths)]


def _cmd_explain(args) -> int:
    from bitlower.backend import split_options
    from bitlower.explain import explain

    if args.list_models:
        return print_models()
    split_options(dict(args.option))  # an unknown or invalid option fails before the model is built
    model_args = list(args.model_arg)
    if args.image_size is not None:
        model_args.insert(0, (get_train_task(task_for_model(args.model)).data_fields[0], args.image_size))
    model = build_model(args.model, model_args)
    model.train(args.train_mode)
    report = explain(model, *example_inputs(model, args.batch), options=dict(args.option))
    print(f"{args.model}: attention sites under torch.compile(backend='bitlower')")
    print(report)
    for path, kind in attention_modules_without_sites(model, report.sites):
        print(f"{path:<32} {kind:<20} {'not found':<10} no attention site in its traced code: not rewritten")
    return 0


def _add_explain(sub) -> None:
    p = sub.add_parser(
        "explain", help="list every attention site of a model and whether the backend rewrites it",
        description="Traces one call of a registered model (random inputs) and lists each attention site with "
                    "its module path, its pattern and whether torch.compile(backend='bitlower') rewrites it to "
                    "binary attention; skipped sites give the reason.",
        formatter_class=HelpFormatter)
    add_model_args(p, "registered model name", "input side (default: the model's own)")
    p.set_defaults(model="vit_tiny_patch16_224")
    p.add_argument("--batch", type=positive_int, default=1, help="batch of the example inputs")
    p.add_argument("--option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable, e.g. min_seq_len=64 or skip=('blocks.0.*',)")
    p.add_argument("--train-mode", action="store_true", help="trace in training mode (default: eval)")
    p.set_defaults(func=_cmd_explain)


# ---------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    """The ``bitlower`` argument parser with its subcommands."""
    parser = _Parser(prog="bitlower", description="bitlower: 1-bit query/key attention for vision and diffusion "
                     "transformers. Start with `bitlower demo`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO records (default: warnings only)")
    parser.add_argument("--version", action="version", version=f"bitlower {bitlower.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,export,bench,explain,sample3d}",
                                parser_class=_Parser)
    _add_demo(sub)
    parser.train_parser = add_train_parser(sub)
    add_export_parser(sub)
    _add_bench(sub)
    _add_explain(sub)
    add_sample3d_parser(sub, HelpFormatter)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``train --resume`` parses again over the run's saved arguments."""
    args = parser.parse_args(argv)
    if args.command == "train" and args.resume is not None and not args.list_models:
        parser.train_parser.set_defaults(**saved_defaults(args.out, args.resume))
        args = parser.parse_args(argv)
    return args


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = logging.getLogger("bitlower.progress")  # progress lines of a run whose output is not a terminal
    if not verbose and not progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run ``bitlower`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Example:
        >>> main(["explain", "--model", "vit_tiny_patch16_224", "--model-arg", "depth=1"])  # doctest: +SKIP
    """
    parser = build_parser()
    prog = "bitlower train" if argv and "train" in argv[:2] else "bitlower"
    try:
        args = _parse(parser, argv)
        prog = f"bitlower {args.command}"
        _configure_logging(args.verbose)
        return args.func(args)
    except (UsageError, CheckpointError, FileNotFoundError) as err:
        message = str(err)
    except (KeyError, ValueError) as err:  # library argument checks: unknown names, bad values
        message = str(err.args[0]) if err.args else type(err).__name__
    except OSError as err:  # a folder or file the run cannot use (permissions, disk full)
        message = f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())}\n")
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
