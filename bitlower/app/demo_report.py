"""The demo's summary table and its training-curve plot, both made from the results dict of ``run_demo``."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bitlower.app.demo_timing import format_timing

LABELS = {
    "full_precision": "full precision",
    "post_training_binary": "binary, post-training (no training)",
    "qat_distilled": "binary, QAT + distillation",
}
COLORS = {"full_precision": "tab:blue", "post_training_binary": "tab:red", "qat_distilled": "tab:green"}


def _offsets(results: dict) -> dict[str, int]:
    """x offset of each phase on the shared step axis: the binary phases start where FP training ended."""
    fp_steps = results["phases"]["full_precision"]["steps"]
    return {"full_precision": 0, "post_training_binary": fp_steps, "qat_distilled": fp_steps}


def plot_curves(results: dict, path: str | Path) -> Path:
    """Write a PNG: test accuracy (left) and training loss (right) of the three models against steps.

    The binary models start from the trained full-precision weights, so their steps are drawn
    after the full-precision run's; the post-training model is one evaluation, drawn as a
    dashed line across the QAT range.

    Args:
        results: the dict ``run_demo`` returns.
        path: PNG file to write.

    Returns:
        ``path`` as a ``Path``.
    """
    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    acc_ax, loss_ax = fig.subplots(1, 2)
    offsets = _offsets(results)
    phases = results["phases"]
    end = offsets["qat_distilled"] + phases["qat_distilled"]["steps"]
    for name, phase in phases.items():
        shift, label, color = offsets[name], LABELS[name], COLORS[name]
        points = phase["curves"]["accuracy"]
        if name == "post_training_binary":
            acc_ax.hlines(phase["accuracy"], shift, end, colors=color, linestyles="dashed", label=label)
            acc_ax.plot([shift], [phase["accuracy"]], "o", color=color)
            continue
        acc_ax.plot([s + shift for s, _ in points], [a for _, a in points], "o-", color=color, label=label, ms=3)
        losses = phase["curves"]["train_loss"]
        loss_ax.plot([s + shift for s, _ in losses], [v for _, v in losses], color=color, label=label, lw=1)
    acc_ax.set(xlabel="training step", ylabel="test accuracy", title="digits test accuracy", ylim=(0, 1.02))
    loss_ax.set(xlabel="training step", ylabel="training loss", title="training loss (QAT: label + distillation)")
    for ax in (acc_ax, loss_ax):
        ax.axvline(offsets["qat_distilled"], color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(results), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _title(results: dict) -> str:
    m, d = results["model"], results["data"]
    return (f"bitlower demo: {d['name']} ({d['train']:,} train / {d['test']} test, {d['image_size']}x{d['image_size']}), "
            f"ViT C {m['embed_dim']}, {m['depth']} blocks, {m['heads']} heads (D {m['head_dim']}), N {m['tokens']}")


def format_summary(results: dict) -> str:
    """The demo's summary: one row per model, the timing table and where the files are."""
    lines = [_title(results), "", f"{'model':<38} {'test acc':>8} {'steps':>6} {'time s':>7}"]
    for name, phase in results["phases"].items():
        label = LABELS[name]
        if name == "qat_distilled" and phase["distill"]["kind"] != "none":
            label = f"binary, QAT + {phase['distill']['kind']} distillation"
        lines.append(f"{label:<38} {100 * phase['accuracy']:>7.1f}% {phase['steps']:>6} {phase['seconds']:>7.1f}")
    timing = results["timing"]
    lines += ["", format_timing(timing["measured"], timing["rows"])]
    files = results["files"]
    lines += ["", f"wall time {results['wall_seconds']:.1f} s on {results['environment']['device']}; "
                  f"results {files['results']}, plot {files['plot']}"]
    return "\n".join(lines)
