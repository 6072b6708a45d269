"""Binary attention vs SDPA / FlexAttention / SageAttention, forward and forward+backward (one call).

Question: how fast are bitlower's fused kernels against the fastest torch SDPA backend on the
shapes of SPEC §6? Every time is the median of CUDA-graph replays (``do_bench_cudagraph``), so
Python launch overhead is out of all rows alike. TFLOP/s-equivalent counts the flops of ordinary
attention: forward ``4 B H N M D``, forward+backward ``14 B H N M D`` (QK^T, PV; backward 2.5x).

``bitlower`` is the operator as a user calls it (forward kernel picked by ``codegen.plan``). ``bitlower_gluon``
(forward, checked against float64 first) and ``bitlower_{hamming,ste}_gluon`` (forward + backward) ask for the
Gluon sm_90 kernels (``KernelOptions(forward="hopper", backward="hopper")``) where the plan takes them.
With ``--diagnostics``, round-2 rows (``bitlower_v2*``) time the forward variants of ``codegen.forward_v2`` beside the
default choice, each after a correctness check on fresh random inputs with a
NaN-poisoned output buffer against a float64 reference (a failing variant gets no time, only FAIL).

Usage:
    python benchmarks/attention.py --out DIR            # run on a GPU: table to stdout, DIR/attention.json/.md/.png
    python benchmarks/attention.py --out DIR --diagnostics   # plus the attempt rows of kernel_notes.md
    python benchmarks/attention.py --out DIR --v2-sweep 0,2  # plus v2 rows per V2_SWEEP config at shapes 0, 2
    python benchmarks/attention.py --plot DIR/attention.json   # PNG beside the json (any machine)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import torch

from bench_common import TABLE_GRIDS as GRIDS, bar_plot, bench, guarded, poison, table_token_inputs, write_report

SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
          (4, 16, 4096, 128), (1, 16, 16384, 64)]
log = logging.getLogger("bench")


_bench, _guarded, _poison, _table_token_inputs = bench, guarded, poison, table_token_inputs  # bench_common.py


def _check(run, shape, spec, table_token: bool) -> float:
    """Relative error of ``run`` on fresh random inputs vs float64, over the bound of the bf16 reference.

    The bound is 3x the reference's own error at bf16 (as tests/codegen/test_gpu.py): <= 1 passes.
    """
    from bitlower import reference

    bsz, heads, n, dim = shape
    q, k, v = _inputs(shape)
    a, b, table = _table_token_inputs(shape) if table_token else (None, None, None)
    _poison(2 * v.numel() * v.element_size())
    out = run(q, k, v, a, b, table)
    hs = 1 if n > 4096 else min(heads, 2)  # float64 scores of one or two heads: <= 2.1 GB at N 16384
    cut = lambda t: None if t is None else (t[:, :hs] if t.dim() == 2 else t[:1, :hs])  # noqa: E731
    args = [cut(t) for t in (q, k, v, a, b, table)]
    ref64 = reference.forward(*[None if t is None else t.double() for t in args], spec)[0]
    ref_lp = reference.forward(*args, spec)[0]
    err = float((out[:1, :hs].double() - ref64).norm() / ref64.norm())
    bound = 3 * float((ref_lp.double() - ref64).norm() / ref64.norm()) + 1e-6
    return err / bound if err == err else float("inf")


def _variant(rows: dict, checks: dict, name: str, run, shape, spec, table_token=False, bench_args=None) -> None:
    """Check ``run`` for correctness, then time it on the shared inputs; FAIL rows get no time."""
    try:
        ratio = _check(run, shape, spec, table_token)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
        log.warning("%s check failed to run: %s", name, str(exc).splitlines()[0][:200])
        checks[name] = "error"
        return
    checks[name] = round(ratio, 3)
    if ratio > 1.0:
        log.warning("%s FAILS its correctness check (err / bound = %.3g): not timed", name, ratio)
        return
    _guarded(rows, name, lambda: run(*bench_args))


def _v2_forward_rows(shape, rows: dict, checks: dict, sweep: bool) -> None:
    """Round-2 forward variants beside the baseline: inference, training, table+token, tiles."""
    import bitlower
    from bitlower.codegen.plan import KernelOptions
    from bitlower.codegen.configs import TileConfig
    from bitlower.codegen.forward import forward
    from bitlower.spec import CallSpec

    bsz, heads, n, dim = shape
    q, k, v = _inputs(shape)
    a, b, table = _table_token_inputs(shape)
    args = (q, k, v, a, b, table)
    infer = CallSpec(scale=dim ** -0.5, save_bits=False)
    train = CallSpec(scale=dim ** -0.5, save_bits=True)
    tt = CallSpec(scale=dim ** -0.5, weighting="token", bias_kind="table", grid=GRIDS[n], save_bits=False)

    def op_v2(q, k, v, a, b, table):  # the operator with the v2 forward asked for: what a user would get
        return bitlower.binary_attention(q, k, v, kernel_options=KernelOptions(forward="v2"))

    def direct(spec, **kw):
        def run(q, k, v, a, b, table):
            bias = table if spec.bias_kind == "table" else None
            return forward(q, k, v, a if spec.weighting == "token" else None,
                           b if spec.weighting == "token" else None, bias, spec, variant="v2", **kw)[0]
        return run

    _variant(rows, checks, "bitlower_v2", op_v2, shape, infer, bench_args=args)
    _variant(rows, checks, "bitlower_v2_stats", direct(infer), shape, infer, bench_args=args)
    _variant(rows, checks, "bitlower_v2_train", direct(train), shape, train, bench_args=args)
    _variant(rows, checks, "bitlower_v2_table_token", direct(tt), shape, tt, True, args)
    _variant(rows, checks, "bitlower_v2_table_gather", direct(tt, table_dense=False), shape, tt, True, args)
    if heads * n * n <= 2**28:  # a dense bf16 bias up to 512 MiB
        _variant(rows, checks, "bitlower_v2_table_dense", direct(tt, table_dense=True), shape, tt, True, args)
    for cfg in V2_SWEEP if sweep else ():
        _variant(rows, checks, "bitlower_v2@{}x{}w{}s{}".format(*cfg), direct(infer, config=TileConfig(*cfg)),
                 shape, infer, bench_args=args)


def _gluon_rows(shape, fwd_rows: dict, bwd_rows: dict, checks: dict) -> None:
    """The Gluon sm_90 kernels through the operator (``KernelOptions(forward="hopper", backward="hopper")``):
    forward checked against float64 first; rows only where the plan takes them (no timed fallback)."""
    import bitlower
    from bitlower.codegen.plan import CallFacts, DeviceFacts, KernelOptions, plan_backward, plan_forward
    from bitlower.spec import CallSpec

    bsz, heads, n, dim = shape
    q, k, v = _inputs(shape)
    call, device = CallFacts.of(q, k, v), DeviceFacts.of(q.device)
    gluon = KernelOptions(forward="hopper", backward="hopper")
    infer = CallSpec(scale=dim ** -0.5, save_bits=False)
    reason = plan_forward(call, infer, device, gluon)
    if isinstance(reason, str):
        log.info("Gluon rows skipped at %s: %s", shape, reason)
        return

    def op(q, k, v, a, b, table):
        return bitlower.binary_attention(q, k, v, kernel_options=KernelOptions(forward="hopper"))
    _variant(fwd_rows, checks, "bitlower_gluon", op, shape, infer, bench_args=(q, k, v, None, None, None))
    tt = CallSpec(scale=dim ** -0.5, weighting="token", bias_kind="table", grid=GRIDS[n], save_bits=False)
    if not isinstance(plan_forward(call, tt, device, gluon), str):  # the table gathered in the Gluon kernel

        def op_tt(q, k, v, a, b, table):
            return bitlower.binary_attention(q, k, v, bias=table, bias_kind="table", grid=GRIDS[n], weighting="token",
                                             a=a, b=b, kernel_options=KernelOptions(forward="hopper"))
        _variant(fwd_rows, checks, "bitlower_gluon_table_token", op_tt, shape, tt, True,
                 bench_args=(q, k, v, *_table_token_inputs(shape)))
    qg, kg, vg = _inputs(shape, grad=True)
    do = torch.randn_like(qg)
    for mode in ("hamming", "ste"):
        train = CallSpec(scale=dim ** -0.5, grad_mode=mode, save_bits=True)
        reason = plan_backward(call, train, device, gluon)
        if isinstance(reason, str):
            log.info("Gluon %s backward row skipped at %s: %s", mode, shape, reason)
            continue
        _guarded(bwd_rows, f"bitlower_{mode}_gluon", lambda m=mode: torch.autograd.grad(
            bitlower.binary_attention(qg, kg, vg, grad_mode=m, kernel_options=gluon), (qg, kg, vg), do))


def _kernel_resources() -> list:
    """Registers, spills and shared memory of every compiled tl.dot forward kernel (option sets v1 and v2)."""
    from bitlower.codegen.forward_kernel import _binary_attn_fwd_kernel

    found = []
    for fn in (_binary_attn_fwd_kernel,):
        try:
            for caches in fn.device_caches.values():
                for compiled in caches[0].values():
                    meta = compiled.metadata
                    found.append({"kernel": fn.__name__, "regs": compiled.n_regs, "spills": compiled.n_spills,
                                  "shared": meta.shared, "warps": meta.num_warps, "stages": meta.num_stages})
        except Exception as exc:  # noqa: BLE001 - Triton's cache layout differs across versions
            log.warning("kernel resources of %s unreadable: %s", fn.__name__, exc)
    return found


def _sdpa(backend, attn_mask=None):
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return run


def _flex_binary(table_token: bool):
    """FlexAttention on bf16 tensor cores computing the same binary scores (signs, scalars, bias)."""
    from torch.nn.attention.flex_attention import flex_attention

    def run(q, k, v, a, b, table=None, index=None):
        qs = torch.where(q >= 0, 1.0, -1.0).to(q.dtype)
        ks = torch.where(k >= 0, 1.0, -1.0).to(k.dtype)
        if table_token:
            def score_mod(score, bi, hi, qi, kj):
                return score * a[bi, hi, qi] * b[bi, hi, kj] + table[index[qi, kj], hi]
        else:
            def score_mod(score, bi, hi, qi, kj):
                return score * a[bi, hi] * b[bi, hi]
        return flex_attention(qs, ks, v, score_mod=score_mod)
    compiled = torch.compile(run, dynamic=False)
    if table_token:
        return compiled

    def mean_abs(q, k, v):  # the (B, H) scalars are computed outside: flex wants captured buffers realised
        return compiled(q, k, v, q.float().abs().mean((2, 3)), k.float().abs().mean((2, 3)))
    return mean_abs


def _inputs(shape, grad=False):
    bsz, heads, n, dim = shape
    make = lambda: torch.randn(bsz, heads, n, dim, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                               requires_grad=grad)
    return make(), make(), make()


def _forward_rows(shape, flex: bool = True, diagnostics: bool = False) -> dict:
    import bitlower
    from bitlower.codegen import forward
    from bitlower.relpos import relative_position_index
    from bitlower.spec import CallSpec
    from torch.nn.attention import SDPBackend

    q, k, v = _inputs(shape)
    bsz, heads, n, dim = shape
    rows: dict = {}
    for name, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        _guarded(rows, name, lambda f=_sdpa(be): f(q, k, v))
    if flex:
        flex_fn = _flex_binary(False)
        _guarded(rows, "flex_binary", lambda: flex_fn(q, k, v))
    try:
        from sageattention import sageattn
        _guarded(rows, "sage", lambda: sageattn(q, k, v, tensor_layout="HND"))
    except ImportError:
        log.info("sageattention not importable: row skipped")
    rows["bitlower"] = _bench(lambda: bitlower.binary_attention(q, k, v))
    spec = CallSpec(scale=dim ** -0.5)
    if diagnostics:
        _guarded(rows, "bitlower_online", lambda: forward(q, k, v, None, None, None, spec, static_max=False))
    grid = GRIDS[n]
    a, b, table = _table_token_inputs(shape)
    rows["bitlower_table_token"] = _bench(lambda: bitlower.binary_attention(
        q, k, v, bias=table, bias_kind="table", grid=grid, weighting="token", a=a, b=b))
    index = relative_position_index(*grid, device="cuda")
    # the full-precision counterpart of a table-bias model: SDPA with the table materialised as a (1, H, N, N)
    # float bias (built once, outside the timing, which favours SDPA; timm's relative-position models rebuild it)
    dense = table[index].permute(2, 0, 1).unsqueeze(0).contiguous()
    for name, be in (("biased_sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("biased_sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        _guarded(rows, name, lambda f=_sdpa(be, dense): f(q, k, v))
    del dense
    if flex:
        flex_tt = _flex_binary(True)
        _guarded(rows, "flex_table_token", lambda: flex_tt(q, k, v, a, b, table, index))
    return rows


def _fwd_bwd_rows(shape, diagnostics: bool = False) -> dict:
    import bitlower
    from torch.nn.attention import SDPBackend

    q, k, v = _inputs(shape, grad=True)
    do = torch.randn_like(q)

    rows: dict = {}

    def timed(name, fn):
        _guarded(rows, name, lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do))
    timed("sdpa_cudnn", _sdpa(SDPBackend.CUDNN_ATTENTION))
    timed("sdpa_flash", _sdpa(SDPBackend.FLASH_ATTENTION))
    for mode in ("hamming", "ste"):
        timed(f"bitlower_{mode}", lambda q, k, v, m=mode: bitlower.binary_attention(q, k, v, grad_mode=m))

    def v2(q, k, v, mode):  # v2 training forward (stats pass writes the bits) + the backward
        from bitlower.codegen.plan import KernelOptions

        return bitlower.binary_attention(q, k, v, grad_mode=mode, kernel_options=KernelOptions(forward="v2"))
    for mode in ("hamming", "ste") if diagnostics else ():
        timed(f"bitlower_v2_{mode}", lambda q, k, v, m=mode: v2(q, k, v, m))
    return rows


def _table(results) -> str:
    lines = ["| pass | shape (B,H,N,D) | backend | ms | TFLOP/s-eq | speed-up vs fastest SDPA |", "|---|---|---|---|---|---|"]
    for res in results:
        bsz, heads, n, dim = res["shape"]
        for kind, factor in (("fwd", 4), ("fwd+bwd", 14)):
            rows = res[kind]
            best = min(t for name, t in rows.items() if name.startswith("sdpa"))
            biased = [t for name, t in rows.items() if name.startswith("biased_sdpa")]
            for name, ms in rows.items():
                tflops = factor * bsz * heads * n * n * dim / (ms * 1e-3) / 1e12
                ratio = f"{best / ms:.2f}x"
                if biased and "table" in name:  # a table-bias row also against SDPA given the same bias
                    ratio += f" ({min(biased) / ms:.2f}x vs biased SDPA)"
                lines.append(f"| {kind} | {bsz},{heads},{n},{dim} | {name} | {ms:.3f} | {tflops:.0f} | {ratio} |")
            for name, ratio in res.get("checks", {}).items() if kind == "fwd" else ():
                if not isinstance(ratio, float) or ratio > 1.0:
                    lines.append(f"| {kind} | {bsz},{heads},{n},{dim} | {name} | FAIL (err/bound {ratio}) | - | - |")
    return "\n".join(lines)


def _plot(path: str) -> None:
    """attention.png beside the json: speed-up over the fastest SDPA per shape, fwd and fwd+bwd."""
    data = json.load(open(path))
    panels = []
    for kind in ("fwd", "fwd+bwd"):
        labels = [f"N={r['shape'][2]}\nD={r['shape'][3]}" for r in data["results"]]
        names = [n for n in data["results"][0][kind] if not n.startswith(("sdpa_eff", "biased_sdpa"))]
        series = {name: [min(t for n2, t in r[kind].items() if n2.startswith("sdpa")) / r[kind][name]
                         if name in r[kind] else 0.0 for r in data["results"]] for name in names}  # 0: failed
        panels.append((f"{kind}, {data['gpu']}", labels, series))
    bar_plot(os.path.splitext(path)[0] + ".png", panels, "speed-up vs fastest SDPA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--plot", default=None, help="make the PNG from a saved json and exit")
    parser.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES")
    parser.add_argument("--v2-sweep", default="", help="SHAPES indices where v2 is also timed per V2_SWEEP config")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also the attempt rows: K from bits, online softmax, every v2 form (kernel_notes.md)")
    parser.add_argument("--no-flex", action="store_true", help="skip the FlexAttention rows (compile time)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new shape after this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.plot:
        _plot(args.plot)
        return
    torch._dynamo.config.cache_size_limit = 64
    picked = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(",")]
    results, start, table = [], time.monotonic(), ""
    for shape in picked:
        if time.monotonic() - start > args.budget_s:
            log.warning("time budget spent: shapes from %s on not run", shape)
            break
        res = {"shape": shape, "fwd": _forward_rows(shape, not args.no_flex, args.diagnostics),
               "fwd+bwd": _fwd_bwd_rows(shape, args.diagnostics), "checks": {}}
        _gluon_rows(shape, res["fwd"], res["fwd+bwd"], res["checks"])
        sweep = str(SHAPES.index(shape)) in args.v2_sweep.split(",")
        if args.diagnostics or sweep:
            _v2_forward_rows(shape, res["fwd"], res["checks"], sweep)
        results.append(res)
        log.info("%s %s", shape, json.dumps({k: {n: round(t, 4) for n, t in res[k].items()} for k in ("fwd", "fwd+bwd")}))
        table = _write(args.out, results)  # after every shape: a killed run keeps what it measured
    try:
        _plot(os.path.join(args.out, "attention.json"))
    except ImportError:
        log.warning("matplotlib not importable: no PNG (make it later with --plot)")
    print(table)  # the benchmark's product is this table on stdout, last


def _write(out: str, results: list) -> str:
    """attention.json (with the compiled kernels' resources) and attention.md under ``out``; the table."""
    import triton

    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "results": results, "kernels": _kernel_resources()}
    table = _table(results)
    kernels = "\n".join(f"- {json.dumps(k)}" for k in meta["kernels"])
    write_report(out, "attention", meta, table, "\nCompiled forward kernels (registers, spills, shared bytes):\n\n"
                 + kernels + "\n")
    return table


if __name__ == "__main__":
    main()
