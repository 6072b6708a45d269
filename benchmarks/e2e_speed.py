"""End-to-end speed: whole models compiled with bitlower vs Inductor (same model, SDPA), H100, bf16.

Question: how much of the kernel speed-up reaches whole ViT / DiT models, for inference and for a
training step, and what does the bitlower backend cost in compile time?

Rows (``--rows``, default all):
- ``infer:<model>``: forward throughput (images/s), ``torch.no_grad``, batch as in the issue.
- ``train:<model>:<mode>``: forward + backward + AdamW step, with the bitlower backend's
  ``grad_mode`` option (``hamming`` or ``ste``); peak memory beside time.
- ``compile:vit_b16_1024``: first-call wall time of each backend (compile included).

Timing: ``triton.testing.do_bench`` median (ms), warm-up excluded, inputs random (never zeros);
float32 weights under bf16 autocast for both backends.
Each row appends one JSON line to ``$OUT/e2e_speed.jsonl`` (or ``runs/e2e_speed.jsonl``) as soon as it is
measured, so a run cut short keeps what it measured.

Run: ``python benchmarks/e2e_speed.py`` (H100; about 8 minutes for all rows).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bitlower.models import DiT, dit_config, vit_base, vit_small

MODELS = {
    # name -> (builder, batch, input maker)
    "vit_s16_224": (lambda: vit_small(img_size=224, patch_size=16), 256, "image224"),
    "vit_s8_320": (lambda: vit_small(img_size=320, patch_size=8), 32, "image320"),
    "vit_b16_1024": (lambda: vit_base(img_size=1024, patch_size=16), 4, "image1024"),
    "dit_xl2_256": (lambda: DiT(dit_config("XL", 2, input_size=32)), 16, "latent32"),
    "dit_xl2_512": (lambda: DiT(dit_config("XL", 2, input_size=64)), 16, "latent64"),
    "dit_b2_512": (lambda: DiT(dit_config("B", 2, input_size=64)), 16, "latent64"),
}
DEFAULT_ROWS = [f"infer:{m}" for m in ("vit_s16_224", "vit_s8_320", "vit_b16_1024", "dit_xl2_256", "dit_xl2_512")] + [
    f"train:{m}:{g}" for m in ("vit_s8_320", "dit_b2_512") for g in ("hamming", "ste")] + ["compile:vit_b16_1024"]


def make_inputs(kind: str, batch: int, device):
    gen = torch.Generator(device=device).manual_seed(0)
    if kind.startswith("image"):
        size = int(kind[5:])
        return (torch.randn(batch, 3, size, size, device=device, generator=gen),)
    size = int(kind[6:])
    x = torch.randn(batch, 4, size, size, device=device, generator=gen)
    t = torch.randint(0, 1000, (batch,), device=device, generator=gen)
    y = torch.randint(0, 1000, (batch,), device=device, generator=gen)
    return x, t, y


def build(name: str, device, train: bool):
    builder, batch, kind = MODELS[name]
    torch.manual_seed(0)
    model = builder().to(device)
    return model.train(train), make_inputs(kind, batch, device), batch


def compiled(model, backend: str, grad_mode: str | None = None):
    torch._dynamo.reset()
    options = {"grad_mode": grad_mode} if backend == "bitlower" and grad_mode else None
    return torch.compile(model, backend=backend, options=options)


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=100, rep=500, return_mode="median")


def infer_row(name, device):
    out = {}
    for backend in ("inductor", "bitlower"):
        model, inputs, batch = build(name, device, train=False)
        fn = compiled(model, backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            fn(*inputs)
            ms = bench(lambda: fn(*inputs))
        out[backend] = {"ms": ms, "images_per_s": batch * 1000 / ms}
    out["ratio"] = out["inductor"]["ms"] / out["bitlower"]["ms"]
    return out


def train_row(name, grad_mode, device):
    out = {}
    for backend in ("inductor", "bitlower"):
        model, inputs, batch = build(name, device, train=True)
        fn = compiled(model, backend, grad_mode)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(*inputs).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms = bench(step)
        out[backend] = {"ms": ms, "images_per_s": batch * 1000 / ms,
                        "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
        del opt, fn, model
        torch.cuda.empty_cache()
    out["ratio"] = out["inductor"]["ms"] / out["bitlower"]["ms"]
    return out


def compile_row(name, device):
    out = {}
    for backend in ("inductor", "bitlower"):
        model, inputs, _ = build(name, device, train=False)
        fn = compiled(model, backend)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            fn(*inputs)
        torch.cuda.synchronize()
        out[backend] = {"first_call_s": time.perf_counter() - start}
    return out


def run_row(row: str, device) -> dict:
    parts = row.split(":")
    if parts[0] == "infer":
        return infer_row(parts[1], device)
    if parts[0] == "train":
        return train_row(parts[1], parts[2], device)
    return compile_row(parts[1], device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    args = parser.parse_args()
    device = torch.device("cuda")
    out_dir = Path(os.environ.get("OUT", "runs"))
    out_dir.mkdir(parents=True, exist_ok=True)
    sink = out_dir / "e2e_speed.jsonl"
    print(f"GPU {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    for row in args.rows:
        try:
            result = run_row(row, device)
        except Exception as err:  # a failing row is reported and the rest still run
            result = {"error": f"{type(err).__name__}: {err}"[:500]}
        with sink.open("a") as f:
            f.write(json.dumps({"row": row, **result}) + "\n")
        print(row, json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
