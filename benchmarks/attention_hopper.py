"""Is the Gluon sm_90 forward faster than every SDPA backend, FlexAttention and SageAttention?

One process, one GPU call: for each SPEC §6 shape (bf16, forward, mean_abs, inference) it draws fresh
non-zero inputs, checks the Gluon forward (and the tl.dot v2 forward) against the float64 reference on
one (batch, 2 heads) slice before timing (a row that fails is printed as FAIL and not timed), then
times every row with ``triton.testing.do_bench`` medians (``--graph``: ``do_bench_cudagraph``, GPU time
without the host's launch cost, as ``attention.py``). Ratio = fastest SDPA backend time / row time
(> 1: faster than the fastest SDPA). The Gluon rows include the stats pass (what the operator runs).

``--table-token``: the bitlower rows take a relative-position table bias (``bench_common.TABLE_GRIDS``) and token
weighting instead of mean_abs, and SDPA also runs given the same table as a dense ``(1, H, N, N)`` bias
(``biased_sdpa_*``, built outside the timing); the ratio stays against the fastest SDPA without a bias.

    python benchmarks/attention_hopper.py [--shapes 0 1 2] [--extra 2,16,8192,64]
        [--configs 64x128x2 128x64x2 64x64x2x1] [--no-flex] [--graph] [--table-token] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_common import TABLE_GRIDS, table_token_inputs
from bitlower import reference
from bitlower.codegen.hopper import HopperConfig, hopper_tensors_unsupported, launch_hopper_forward
from bitlower.spec import CallSpec

SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
          (4, 16, 4096, 128), (1, 16, 16384, 64)]  # SPEC §6
SDPA = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}


def _rel(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return float("inf") if torch.isnan(x).any() else float((x - ref).norm() / ref.norm())


def checked(run, q, k, v, spec, extra=(None, None, None)) -> str | None:
    """None if ``run``'s output on the (1, 2) slice is within 3x the bf16 reference's own error, else why.
    ``extra``: the call's ``(a, b, bias)`` (a table bias is ``(rows, H)``: its first two heads are taken)."""
    out = run()[0][:1, :2]
    a, b, bias = extra
    cut = lambda t: None if t is None else (t[:, :2] if t.dim() == 2 else t[:1, :2])  # noqa: E731
    args = [cut(t) for t in (q, k, v, a, b, bias)]
    ref64 = reference.forward(*[None if t is None else t.double() for t in args], spec)[0]
    ref_lp = reference.forward(*args, spec)[0]
    err, bound = _rel(out, ref64), 3 * _rel(ref_lp, ref64) + 1e-6
    return None if err <= bound else f"FAIL (err {err:.2e} > {bound:.2e})"


def bitlower_rows(q, k, v, spec, configs, extra=(None, None, None)):
    """``{name: callable}`` of the Gluon forward (table config, each --configs, online) and the v2 forward;
    ``extra``: the call's ``(a, b, bias)``."""
    rows = {"gluon": lambda: launch_hopper_forward(q, k, v, *extra, spec)}
    for text in configs:
        cfg = HopperConfig(*map(int, text.split("x")))
        rows[f"gluon@{text}"] = lambda cfg=cfg: launch_hopper_forward(q, k, v, *extra, spec, config=cfg)
    rows["gluon_online"] = lambda: launch_hopper_forward(q, k, v, *extra, spec, static_max=False)
    from bitlower.codegen import forward
    rows["tl_dot_v2"] = lambda: forward(q, k, v, *extra, spec, variant="v2")  # the plan's v2 row
    return rows


def peer_rows(q, k, v, scale, flex_row: bool = True, dense_bias=None):
    """``{name: callable}`` of the SDPA backends, FlexAttention and SageAttention (when importable); with
    ``dense_bias`` also cuDNN and efficient SDPA given it as ``attn_mask`` (``biased_sdpa_*``)."""
    def sdpa(backend, mask=None):
        def run():
            with sdpa_kernel([backend]):
                return (torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),)
        return run
    rows = {name: sdpa(backend) for name, backend in SDPA.items()}
    if dense_bias is not None:
        for name in ("sdpa_cudnn", "sdpa_efficient"):
            rows[f"biased_{name}"] = sdpa(SDPA[name], dense_bias)
    if flex_row:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention)
        rows["flex_attention"] = lambda: (flex(q, k, v, scale=scale),)
    try:
        from sageattention import sageattn
        rows["sageattention"] = lambda: (sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=scale),)
    except ImportError:
        pass
    return rows


def bench_shape(shape, configs, rep: int, graph: bool = False, flex_row: bool = True, table_token: bool = False):
    bsz, heads, n, dim = shape
    gen = torch.Generator(device="cuda").manual_seed(n * dim + bsz)
    q, k, v = (torch.randn(bsz, heads, n, dim, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
    extra, dense_bias = (None, None, None), None
    spec = CallSpec(scale=dim ** -0.5, weighting="mean_abs", save_bits=False)
    if table_token:
        from bitlower.relpos import relative_position_index

        extra = table_token_inputs(shape)
        grid = TABLE_GRIDS[n]
        spec = CallSpec(scale=dim ** -0.5, weighting="token", bias_kind="table", grid=grid, save_bits=False)
        dense_bias = extra[2][relative_position_index(*grid, device="cuda")].permute(2, 0, 1).unsqueeze(0).contiguous()
    reason = hopper_tensors_unsupported(q, k, v, *extra, spec)
    times, notes = {}, {}
    rows = {} if reason else bitlower_rows(q, k, v, spec, configs, extra)
    if reason:
        notes["gluon"] = reason
    for name, run in rows.items():
        try:
            notes[name] = checked(run, q, k, v, spec, extra)
        except Exception as exc:  # noqa: BLE001 - a crashing row is reported, the others still run
            notes[name] = f"ERROR {type(exc).__name__}: {str(exc)[:120]}"
    rows.update(peer_rows(q, k, v, spec.scale, flex_row, dense_bias))
    for name, run in rows.items():
        if notes.get(name):
            continue
        try:
            if graph:
                times[name] = triton.testing.do_bench_cudagraph(run, rep=rep, return_mode="median")
            else:
                times[name] = triton.testing.do_bench(run, warmup=25, rep=rep, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - e.g. an SDPA backend that refuses the shape
            notes[name] = f"ERROR {type(exc).__name__}: {str(exc)[:120]}"
    return times, notes


def table(results) -> str:
    names = sorted({name for r in results for name in list(r["ms"]) + list(r["notes"])})
    lines = ["| shape | fastest SDPA ms | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for r in results:
        sdpa = [r["ms"][name] for name in SDPA if name in r["ms"]]
        best = min(sdpa) if sdpa else float("nan")
        cells = []
        for name in names:
            if name in r["ms"]:
                cells.append(f"{r['ms'][name]:.3f} ({best / r['ms'][name]:.2f}x)")
            else:
                cells.append(r["notes"].get(name) or "-")
        lines.append(f"| {tuple(r['shape'])} | {best:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, nargs="*", default=list(range(len(SHAPES))))
    parser.add_argument("--no-flex", action="store_true", help="skip the FlexAttention row (compile time)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="B,H,N,D", help="shapes beyond SPEC §6")
    parser.add_argument("--configs", nargs="*", default=[], metavar="BNxBMxS[xPEEL]", help="extra Gluon tile configs")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms)")
    parser.add_argument("--graph", action="store_true", help="CUDA-graph replay times (GPU time)")
    parser.add_argument("--table-token", action="store_true", help="table bias + token weighting (see the docstring)")
    parser.add_argument("--out", default=None, help="folder for attention_hopper.json / .md")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}", flush=True)
    results = []
    shapes = [SHAPES[index] for index in args.shapes] + [tuple(map(int, text.split(","))) for text in args.extra]
    for shape in shapes:
        times, notes = bench_shape(shape, args.configs, args.rep, args.graph, not args.no_flex, args.table_token)
        results.append(dict(shape=shape, ms=times, notes={k: v for k, v in notes.items() if v}))
        print(f"shape {shape}: " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()), flush=True)
    text = table(results)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "attention_hopper.json"), "w") as handle:
            json.dump(results, handle, indent=1)
        with open(os.path.join(args.out, "attention_hopper.md"), "w") as handle:
            handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
