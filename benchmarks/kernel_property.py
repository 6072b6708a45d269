"""GPU property test of the fused kernels (issue 20): random calls against a float64 golden run.

Question: over random shapes, head dims, dtypes, layouts, weightings, bias kinds, gradient modes and
magnitudes, do the fused forward and backward of ``bitlower.binary_attention`` agree with the float64
reference, without a crash or a fallback, and which kernel plan ran?

Each batch of cases runs in its own process (``--worker``), so a crash (an illegal memory access loses the
CUDA context) costs one batch and names its case; the parent writes ``kernel_property.jsonl`` (one line per
case: the case, its errors and bounds, the plan) and ``kernel_property.md`` (run / held / failed / crashed,
per-plan coverage).

Bounds (golden = float64 reference on CPU, same rounded inputs):
- output: ``err <= 3 * err(reference at the working dtype) + 1e-6`` (tests/codegen/test_gpu.py);
- every gradient ``g``: ``|g - g64| <= tol * (|g64| + T)`` in norm, ``tol`` 1e-2 (bf16/fp16), 1e-5
  (float32), where ``T`` is the norm of the same gradient with ``dS_ij`` replaced by
  ``p_ij (|dp_ij| + |delta_i|)``: the size of the terms a cancelling sum is made of. With one key
  ``dS = p (dp - delta) = 0`` exactly and ``g64 = 0``; a relative error there measures nothing.

Usage (one GPU call): ``python benchmarks/kernel_property.py --cases 600 --batch 30 --out $OUT``;
memory check of a few cases per forward plan: add ``--sanitize 3`` (runs each under
``compute-sanitizer --tool memcheck``).
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

import torch

from bench_common import run_worker

DIMS = (16, 24, 32, 48, 64, 72, 80, 96, 128, 160, 256)
LENGTHS = (1, 2, 7, 17, 31, 64, 100, 129, 197, 256, 300)
LAYOUTS = ("contiguous", "bnhd", "strided_last", "offset")
BIAS_KINDS = ("none", "head", "table", "dense", "mask")
TOL = {"bfloat16": 1e-2, "float16": 1e-2, "float32": 1e-5}
# unit roundoff of the P.V operand: the kernels round p = exp2(s2 - m) < 1 to it, so at M = 1 (reference error
# 0: it returns v) the output is off by up to one rounding (tests/codegen/test_gpu_hopper.py, same bound)
PV_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 1e-6}


def make_case(seed: int, index: int) -> dict:
    """One random call, as JSON-able data (case ``index`` of the run with ``seed``)."""
    rng = random.Random(seed * 1_000_003 + index)
    bias_kind = rng.choice(BIAS_KINDS)
    n, m = rng.choice(LENGTHS), rng.choice(LENGTHS)
    grid = None
    if bias_kind == "table":
        grid = (rng.randint(1, 9), rng.randint(1, 9), rng.randint(0, 2))
        n = m = grid[0] * grid[1] + grid[2]
    return dict(index=index, seed=seed, B=rng.randint(1, 3), H=rng.randint(1, 3), N=n, M=m, D=rng.choice(DIMS),
                Dv=rng.choice(DIMS), dtype=rng.choice(("bfloat16", "bfloat16", "float16", "float32")),
                layout=rng.choice(LAYOUTS), weighting=rng.choice(("mean_abs", "mean_abs", "token", "none")),
                bias_kind=bias_kind, grid=grid, grad_mode=rng.choice(("ste", "hamming", "stopgrad")),
                magnitude=rng.choice((1.0, 1.0, 0.01, 30.0, 1000.0)), scale=rng.choice((None, 0.05, 1.0)))


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values ``(B, H, L, D)`` in the named memory layout."""
    bsz, heads, length, dim = x.shape
    if layout == "bnhd":
        return x.transpose(1, 2).contiguous().transpose(1, 2)  # storage (B, N, H, D)
    if layout == "strided_last":
        wide = torch.zeros(bsz, heads, length, 2 * dim, dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "offset":
        flat = torch.zeros(x.numel() + 5, dtype=x.dtype, device=x.device)
        out = flat[5:].view(x.shape)
        out.copy_(x)
        return out
    return x.contiguous()


def build(case: dict, device: str) -> dict:
    """Leaf tensors of the case (``requires_grad`` as the mode differentiates them) and keyword arguments."""
    from bitlower.relpos import table_rows

    gen = torch.Generator().manual_seed(case["seed"] * 7919 + case["index"])
    dtype = getattr(torch, case["dtype"])
    b, h, n, m = case["B"], case["H"], case["N"], case["M"]

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    mag = case["magnitude"]
    t = dict(q=randn(b, h, n, case["D"], scale=mag), k=randn(b, h, m, case["D"], scale=mag),
             v=randn(b, h, m, case["Dv"]), do=randn(b, h, n, case["Dv"]))
    kw = dict(weighting=case["weighting"], grad_mode=case["grad_mode"], scale=case["scale"])
    if case["weighting"] == "token":
        t["a"] = (torch.rand(b, h, n, generator=gen) + 0.5).to(dtype)
        t["b"] = (torch.rand(b, h, m, generator=gen) + 0.5).to(dtype)
    kind = case["bias_kind"]
    if kind == "head":
        t["bias"] = randn(h)
    elif kind == "table":
        t["bias"] = randn(table_rows(case["grid"][0], case["grid"][1]), h, scale=0.5)
        kw["grid"] = tuple(case["grid"])
    elif kind == "dense":
        t["bias"] = randn(1, h, n, m)
    elif kind == "mask":
        keep = torch.rand(b, 1, n, m, generator=gen) > 0.3
        keep[..., 0] = True  # no fully masked row (NaN on both sides)
        t["bias"] = keep
    if kind != "none":
        kw["bias_kind"] = kind
    moved = {name: x.to(device) for name, x in t.items()}
    for name in ("q", "k", "v"):
        moved[name] = _layout(moved[name], case["layout"])
    return dict(tensors=moved, kwargs=kw)


def _call(tensors: dict, kwargs: dict):
    """Output and the gradients of every floating leaf (``None`` where autograd gives none)."""
    import bitlower

    leaves = {n: x.detach().requires_grad_(x.is_floating_point()) for n, x in tensors.items() if n != "do"}
    extra = {n: leaves[n] for n in ("a", "b", "bias") if n in leaves}
    out = bitlower.binary_attention(leaves["q"], leaves["k"], leaves["v"], **extra, **kwargs)
    diff = [x for x in leaves.values() if x.requires_grad]
    grads = torch.autograd.grad(out, diff, tensors["do"].to(out.dtype), allow_unused=True)
    return out.detach(), dict(zip([n for n, x in leaves.items() if x.requires_grad], grads))


def _spec(tensors: dict, kwargs: dict):
    """The ``CallSpec`` ``binary_attention`` builds for this call."""
    from bitlower.spec import CallSpec

    kind = kwargs.get("bias_kind", "none")
    scale = kwargs["scale"] if kwargs["scale"] is not None else tensors["q"].shape[-1] ** -0.5
    return CallSpec(scale=scale, weighting=kwargs["weighting"], bias_kind=kind, grid=tuple(kwargs.get("grid", ())),
                    grad_mode=kwargs["grad_mode"])


def magnitude_grads(t: dict, kwargs: dict) -> dict:
    """float64 gradients with every ``dS_ij = p_ij (dp_ij - delta_i)`` replaced by ``p_ij (|dp_ij| + |delta_i|)``.

    ``t``: the case's float64 CPU tensors. Same sums as ``bitlower.reference_backward`` (one sign plane).
    """
    from bitlower import reference
    from bitlower.relpos import dense_to_table_grad

    spec = _spec(t, kwargs)
    q, k, v, do = t["q"], t["k"], t["v"], t["do"]
    _, lse, qbits, kbits, _, _, a, b, _ = reference.forward(q, k, v, t.get("a"), t.get("b"), t.get("bias"), spec)
    h = reference.integer_scores(qbits, kbits, q.shape[-1], torch.float64)  # (B, H, N, M, 1, 1)
    s = reference.scores(h, a, b, reference.dense_bias(t.get("bias"), spec, torch.float64), spec.scale)
    p = torch.exp(s - lse.unsqueeze(-1))  # (B, H, N, M)
    dp = do @ v.transpose(-1, -2)
    ds = p * (dp.abs() + (p * dp).sum(-1, keepdim=True).abs())  # |dS| bound
    g, habs = ds * spec.scale, h[..., 0, 0].abs()
    a1, b1 = a[..., 0], b[..., 0]  # (B, H, N), (B, H, M)
    da = (g * habs * b1.unsqueeze(-2)).sum(-1)  # (B, H, N)
    db = (g * habs * a1.unsqueeze(-1)).sum(-2)  # (B, H, M)
    dim = q.shape[-1]
    out = {"a": da, "b": db, "v": None}
    for name, rows, own, total in (("q", a1 * (g @ b1.unsqueeze(-1))[..., 0], q, da),
                                   ("k", b1 * (g.transpose(-1, -2) @ a1.unsqueeze(-1))[..., 0], k, db)):
        grad = torch.zeros_like(own)
        if spec.grad_mode == "ste":
            grad = grad + rows.unsqueeze(-1)  # every channel: |sum_j G_ij b_j sgn k_jd| <= sum_j |G_ij| b_j
        if spec.weighting == "mean_abs" and spec.grad_mode != "stopgrad":
            grad = grad + total.sum(-1)[..., None, None] / (own.shape[2] * dim)
        out[name] = grad
    bias, kind = t.get("bias"), spec.bias_kind
    if kind == "head":
        out["bias"] = ds.sum(dim=(0, 2, 3))
    elif kind == "table":
        out["bias"] = dense_to_table_grad(ds.sum(0), spec.grid, bias.shape[0])
    elif kind == "dense":
        out["bias"] = ds.sum_to_size(bias.shape)
    return out


def _err(x, ref) -> float:
    if x is None or ref is None:
        return 0.0 if (x is None) == (ref is None) or ref is None or not ref.abs().any() else float("inf")
    x, ref = x.double().cpu(), ref.double().cpu()
    return float("inf") if torch.isnan(x).any() != torch.isnan(ref).any() else float((x - ref).nan_to_num().norm())


def run_case(case: dict, device: str = "cuda") -> dict:
    """Errors, bounds, verdict and plan of one case on ``device`` (``cpu``: the script's own smoke test)."""
    from bitlower.counters import counters
    from bitlower.codegen.plan import describe_call

    built = build(case, device)
    tensors, kwargs = built["tensors"], built["kwargs"]
    counters.clear()
    out, grads = _call(tensors, kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    fallbacks = dict(counters["fallback"])
    cpu64 = {n: x.detach().cpu().double() if x.is_floating_point() else x.cpu() for n, x in tensors.items()}
    cpu_lp = {n: x.detach().cpu() for n, x in tensors.items()}
    out64, grads64 = _call(cpu64, kwargs)
    out_lp, _ = _call(cpu_lp, kwargs)
    mags = magnitude_grads(cpu64, kwargs)
    tol = TOL[case["dtype"]]
    out_err = _err(out, out64) / max(float(out64.norm()), 1e-30)
    out_bound = max(3 * _err(out_lp, out64) / max(float(out64.norm()), 1e-30), PV_ROUNDOFF[case["dtype"]])
    checks = {"out": (out_err, out_bound)}
    for name, g64 in grads64.items():
        mag = mags.get(name)
        scale = (0.0 if g64 is None else float(g64.norm())) + (0.0 if mag is None else float(mag.norm()))
        checks[name] = (_err(grads.get(name), g64), tol * scale + 1e-30)
    held = not fallbacks and all(err <= bound for err, bound in checks.values())
    return dict(case=case, held=held, fallbacks=fallbacks, checks=checks, plan=describe_call(tensors, kwargs))


def worker(cases: list[dict], out_path: Path, device: str = "cuda") -> None:
    """Run ``cases`` in this process, one jsonl line each (flushed: a crash leaves the lines before it)."""
    with out_path.open("a") as f:
        for case in cases:
            f.write(json.dumps({"started": case["index"]}) + "\n")
            f.flush()
            try:
                row = run_case(case, device)
            except Exception as exc:  # a Python-level failure of one case; a CUDA fault ends the process
                row = dict(case=case, held=False, error=repr(exc)[:500])
            f.write(json.dumps(row) + "\n")
            f.flush()


def _summary(rows: list[dict], crashed: list[dict]) -> str:
    held = sum(r["held"] for r in rows)
    plans = collections.Counter(r.get("plan", {}).get("forward", "?") for r in rows)
    lines = ["# Kernel property test", "", f"cases run {len(rows) + len(crashed)}, held {held}, "
             f"failed {len(rows) - held}, crashed {len(crashed)}", "", "| forward plan | cases |", "|---|---|"]
    lines += [f"| {p} | {c} |" for p, c in sorted(plans.items())]
    lines += ["", "## Failed or crashed", ""]
    lines += [f"- {json.dumps(r['case'])}: {r.get('error') or r.get('checks')}" for r in rows if not r["held"]]
    lines += [f"- {json.dumps(c)}: crashed (process exit)" for c in crashed]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--sanitize", type=int, default=0, help="cases per forward plan under compute-sanitizer")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (reference on both sides)")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)  # "start:count:path"
    args = parser.parse_args(argv)
    if args.worker:
        start, count, path = args.worker.split(":", 2)
        worker([make_case(args.seed, i) for i in range(int(start), int(start) + int(count))], Path(path), args.device)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "kernel_property.jsonl"
    rows_path.write_text("")
    for start in range(0, args.cases, args.batch):
        count = min(args.batch, args.cases - start)
        run_worker(__file__, ["--seed", str(args.seed), "--device", args.device, "--worker",
                              f"{start}:{count}:{rows_path}"])
    rows, crashed, started = [], [], None
    for line in rows_path.read_text().splitlines():
        rec = json.loads(line)
        if "started" in rec:
            if started is not None:
                crashed.append(make_case(args.seed, started))
            started = rec["started"]
        else:
            rows.append(rec)
            started = None
    if started is not None:
        crashed.append(make_case(args.seed, started))
    (args.out / "kernel_property.md").write_text(_summary(rows, crashed))
    if args.sanitize:
        _sanitize(rows, args)
    print(_summary(rows, crashed))
    return 0 if crashed == [] and all(r["held"] for r in rows) else 1


def _sanitize(rows: list[dict], args) -> None:
    """``compute-sanitizer --tool memcheck`` over the first ``args.sanitize`` cases of each forward plan."""
    by_plan = collections.defaultdict(list)
    for r in rows:
        by_plan[r.get("plan", {}).get("forward", "?")].append(r["case"]["index"])
    log = args.out / "kernel_property_sanitizer.txt"
    with log.open("w") as f:
        for plan, indices in sorted(by_plan.items()):
            for i in indices[:args.sanitize]:
                sanitizer = ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "9"]
                proc = run_worker(__file__, ["--seed", str(args.seed), "--worker",
                                             f"{i}:1:{args.out / 'sanitized.jsonl'}"], prefix=sanitizer)
                f.write(f"## plan {plan} case {i}: exit {proc.returncode}\n{proc.stdout[-4000:]}\n")


if __name__ == "__main__":
    sys.exit(main())
