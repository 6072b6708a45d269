"""Is the Gluon sm_90 backward faster than cuDNN's backward, and which of its tile configs is fastest?

One process, one GPU call. For each SPEC §6 shape (bf16, mean_abs, gradients of q, k and v) and each
gradient mode (``hamming``, ``ste``): fresh non-zero inputs; one fused forward (the plan's tl.dot
forward) gives the saved state; the Gluon backward (its table config and each ``--configs``) and the
tl.dot backward are checked against the float64 reference backward on a (1 batch, 2 heads) slice (a
row whose error exceeds 3x the tl.dot backward's + 1e-3 is printed FAIL and not timed), then timed
(``bench_common.bench``: CUDA-graph medians). Peers: the cuDNN and FlashAttention SDPA backends.

Rows: ``bwd``: the backward alone (SDPA: ``autograd.grad`` of a retained graph); ``fwd+bwd``: the
operator end to end (``bitlower.binary_attention`` with ``KernelOptions(backward=...)``, autograd)
against SDPA forward + backward. Ratio = cuDNN time / row time (> 1: faster than cuDNN).

    python benchmarks/attention_hopper_bwd.py [--shapes 0 2 4] [--modes hamming ste]
        [--configs 64x32x2 128x32x2 64x64x2 128x32x3] [--out DIR]

``--configs`` entries are ``BLOCK_MxBLOCK_NxSTAGES`` of ``HopperBackwardConfig`` (keys per CTA, queries
per tile, ring stages).
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_common import kernel_times, timed, write_report

SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
          (4, 16, 4096, 128), (1, 16, 16384, 64)]  # SPEC §6
PEERS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
NEEDS = [True, True, True, False, False, False]  # gradients of q, k, v
log = logging.getLogger("bench")


def parse_config(text: str):
    """``"BMxBNxS"`` or ``"BMxBNxSxR"`` (R: ``staged_rows`` 0 / 1) -> ``HopperBackwardConfig``."""
    from bitlower.codegen.hopper.backward_support import HopperBackwardConfig

    parts = text.split("x")
    if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts):
        raise ValueError(f"a backward config is BLOCK_MxBLOCK_NxSTAGES[xSTAGED_ROWS], got {text!r}")
    return HopperBackwardConfig(*map(int, parts))


def _rel(x, ref) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    return float("inf") if torch.isnan(x).any() else float((x - ref).norm() / max(float(ref.norm()), 1e-30))


def slice_errors(grads, q, k, v, do, spec, a=None, b=None) -> list[float]:
    """Relative errors of ``(dq, dk, dv)`` on the (1, 2) slice against the float64 reference backward."""
    from bitlower import reference, reference_backward

    q64, k64, v64, do64 = (x[:1, :2].double().cpu() for x in (q, k, v, do))
    a64, b64 = (None if x is None else x[:1, :2].double().cpu() for x in (a, b))
    saved = reference.forward(q64, k64, v64, a64, b64, None, spec)
    ref = reference_backward.backward(do64, v64, None, *saved[1:], spec, q.shape[-1], NEEDS)
    return [0.0 if g is None or r is None else _rel(g[:1, :2], r) for g, r in zip(grads[:3], ref[:3])]


def backward_rows(q, k, v, do, spec, configs, a=None, b=None):
    """``{name: callable}`` of the fused backwards on one saved forward (``a``, ``b``: token weights)."""
    from bitlower import codegen
    from bitlower.codegen import KernelOptions
    from bitlower.codegen.hopper.backward_launcher import launch_hopper_backward

    saved = codegen.forward(q, k, v, a, b, None, spec)
    args = (do, v, None, *saved[1:], spec, q.shape[-1], NEEDS)
    tldot = KernelOptions(backward="tldot")  # the portable kernels (auto takes the Gluon ones at N >= 4096)
    rows = {"bwd tldot": lambda: codegen.backward(*args, tldot, out=saved[0])}
    rows["bwd gluon"] = lambda: launch_hopper_backward(*args, out=saved[0])
    for cfg in configs:
        rows[f"bwd gluon {cfg}"] = lambda cfg=cfg: launch_hopper_backward(*args, out=saved[0], config=parse_config(cfg))
    return rows


def peer_rows(q, k, v, do, scale):
    """SDPA backward alone (a retained graph) and forward + backward, per backend in ``PEERS``."""
    rows = {}
    for name, backend in PEERS.items():
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]

        def fwd_bwd(backend=backend, leaves=leaves):
            with sdpa_kernel([backend]):
                out = torch.nn.functional.scaled_dot_product_attention(*leaves, scale=scale)
            return torch.autograd.grad(out, leaves, do)

        try:
            with sdpa_kernel([backend]):
                out = torch.nn.functional.scaled_dot_product_attention(*leaves, scale=scale)
        except RuntimeError as exc:  # a backend that refuses the shape
            log.warning("%s refused %s: %s", name, tuple(q.shape), str(exc).splitlines()[0][:120])
            continue
        rows[f"bwd {name}"] = lambda out=out, leaves=leaves: torch.autograd.grad(out, leaves, do, retain_graph=True)
        rows[f"fwd+bwd {name}"] = fwd_bwd
    return rows


def operator_rows(q, k, v, do, mode: str):
    """The operator end to end: the tl.dot backward forced and the Gluon backward (the default on sm_90)."""
    import bitlower
    from bitlower.codegen import KernelOptions

    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

    def run(options):
        out = bitlower.binary_attention(*leaves, grad_mode=mode, kernel_options=options)
        return torch.autograd.grad(out, leaves, do)

    return {"fwd+bwd bitlower tldot": lambda: run(KernelOptions(backward="tldot")),
            "fwd+bwd bitlower gluon": lambda: run(KernelOptions(backward="hopper"))}


def bench_case(shape, mode: str, configs, kernels: bool = False, weighting: str = "mean_abs") -> dict:
    from bitlower.spec import CallSpec

    bsz, heads, n, dim = shape
    gen = torch.Generator(device="cuda").manual_seed(n * dim + bsz)
    q, k, v, do = (torch.randn(bsz, heads, n, dim, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(4))
    a = b = None
    if weighting == "token":  # per-token weights of the backward rows (the operator and SDPA rows: mean_abs / plain)
        a, b = (torch.rand(bsz, heads, n, device="cuda", generator=gen) + 0.5 for _ in range(2))
    spec = CallSpec(scale=dim ** -0.5, weighting=weighting, grad_mode=mode, save_bits=True)
    rows, notes, errors = backward_rows(q, k, v, do, spec, configs, a, b), {}, {}
    for name, run in rows.items():
        try:
            errors[name] = slice_errors(run(), q, k, v, do, spec, a, b)
        except Exception as exc:  # noqa: BLE001 - a crashing row is reported, the others still run
            notes[name] = f"ERROR {type(exc).__name__}: {str(exc)[:120]}"
    reference_errors = errors.get("bwd tldot", [0.0, 0.0, 0.0])
    for name, errs in errors.items():
        if any(e > 3 * r + 1e-3 for e, r in zip(errs, reference_errors)):
            notes[name] = "FAIL (dq, dk, dv errors " + ", ".join(f"{e:.1e}" for e in errs) + ")"
    rows.update(peer_rows(q, k, v, do, spec.scale))
    rows.update(operator_rows(q, k, v, do, mode))
    times, timing = {}, {}
    for name, run in rows.items():
        if notes.get(name):
            continue
        try:
            times[name], timing[name] = timed(run)
        except Exception as exc:  # noqa: BLE001 - e.g. a backend that refuses graph capture and eager alike
            notes[name] = f"ERROR {type(exc).__name__}: {str(exc)[:120]}"
    result = dict(shape=list(shape), mode=mode, ms=times, timing=timing, notes=notes, errors=errors)
    if kernels:  # device time of each kernel a fused backward launches (torch.profiler, mean of 5 calls)
        result["kernels"] = {name: kernel_times(rows[name]) for name in ("bwd tldot", "bwd gluon") if name in times}
    return result


def table(results: list[dict]) -> str:
    """One line per (shape, mode, row): ms and the ratio to cuDNN's time of the same pass."""
    lines = ["| shape | mode | row | ms | timing | vs cuDNN | dq, dk, dv error |", "|---|---|---|---|---|---|---|"]
    for r in results:
        names = list(r["ms"]) + [n for n in r["notes"] if n not in r["ms"]]
        for name in names:
            base = r["ms"].get(f"{name.split()[0]} cudnn")
            if name in r["ms"]:
                ms = r["ms"][name]
                ratio = f"{base / ms:.2f}x" if base else "-"
                cell = f"{ms:.3f}"
            else:
                cell, ratio = r["notes"][name], "-"
            errs = ", ".join(f"{e:.1e}" for e in r["errors"].get(name, [])) or "-"
            how = r.get("timing", {}).get(name, "-")
            lines.append(f"| {tuple(r['shape'])} | {r['mode']} | {name} | {cell} | {how} | {ratio} | {errs} |")
    return "\n".join(lines)


def main() -> None:
    import triton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=list(range(len(SHAPES))))
    parser.add_argument("--modes", nargs="+", default=["hamming", "ste"], choices=["hamming", "ste", "stopgrad"])
    parser.add_argument("--configs", nargs="*", default=[], metavar="BMxBNxS[xR]")
    parser.add_argument("--weighting", default="mean_abs", choices=["mean_abs", "token"],
                        help="the backward rows' weighting (token: the staged rows' case)")
    parser.add_argument("--out", default=None, help="folder for attention_hopper_bwd.json / .md")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new case after this")
    parser.add_argument("--kernels", action="store_true", help="also each fused backward kernel's device time")
    args = parser.parse_args()
    for text in args.configs:
        parse_config(text)  # a malformed config fails before any GPU time is spent
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    print(", ".join(f"{k} {v}" for k, v in meta.items()), flush=True)
    results, start = [], time.monotonic()
    for index in args.shapes:
        for mode in args.modes:
            if time.monotonic() - start > args.budget_s:
                log.warning("time budget spent: %s %s and later cases not run", SHAPES[index], mode)
                continue
            results.append(bench_case(SHAPES[index], mode, args.configs, args.kernels, args.weighting))
            for name, per_kernel in results[-1].get("kernels", {}).items():
                print(f"  {name} kernels: " + ", ".join(f"{k} {v:.4f}" for k, v in per_kernel.items()), flush=True)
            if args.out:  # the report so far: a call cut short by its time limit keeps its finished cases
                write_report(args.out, "attention_hopper_bwd", dict(meta, results=results), table(results))
            print(f"{SHAPES[index]} {mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[-1]["ms"].items()),
                  flush=True)
    text = table(results)
    if args.out:
        write_report(args.out, "attention_hopper_bwd", dict(meta, results=results), text)
    print(text)


if __name__ == "__main__":
    main()
