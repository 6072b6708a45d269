"""Where a fused forward's time goes: host overhead, GPU time, and each kernel's device time.

For each SPEC §6 shape (bf16, mean_abs, inference) and each row (the Gluon forward, the tl.dot v2
forward, cuDNN and FlashAttention SDPA): ``wall`` is ``triton.testing.do_bench`` of the Python call
(host dispatch included), ``gpu`` is ``do_bench_cudagraph`` (one CUDA graph replay: device time
alone), and the profiler lists each kernel's mean device time per call. Then the host-side hot spots
of one Gluon call (cProfile, 50 calls, ViT-S shape). Two more rows answer issue 14's prologue
criterion: ``stats`` (the Gluon forward's stats pass alone, q and k in one launch) and ``copy_qk`` (a
clone of q and of k); each has ``gb_per_s`` (bytes it reads and writes / GPU time), and ``stats``
has ``of_copy`` (its bandwidth / the copy's; the target is >= 0.8).

    python benchmarks/hopper_profile.py [--shapes 0 2 4] [--out DIR]
    ncu --launch-skip 1 --launch-count 1 -k regex:sm90 python benchmarks/hopper_profile.py --once gluon --shapes 6
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_common import kernel_times
from bitlower.codegen import forward
from bitlower.codegen.hopper import launch_hopper_forward
from bitlower.codegen.configs import padded_dim
from bitlower.codegen.stats import pair_stats
from bitlower.spec import CallSpec

SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
          (4, 16, 4096, 128), (1, 16, 16384, 64)]  # SPEC §6


def rows_for(q, k, v, spec):
    """``{name: callable}``: the two bitlower forwards and the two fastest SDPA backends."""
    def sdpa(backend):
        def run():
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=spec.scale)
        return run
    return {"gluon": lambda: launch_hopper_forward(q, k, v, None, None, None, spec),
            "tl_dot_v2": lambda: forward(q, k, v, None, None, None, spec, variant="v2"),
            "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
            "copy_qk": lambda: (q.clone(), k.clone()),  # before "stats": its rate is the stats row's reference
            "stats": lambda: pair_stats(q, k, None, None, spec, eff=spec.weighting != "mean_abs", signs=True,
                                        fp8_signs=True)}


def moved_bytes(name: str, q, k) -> int | None:
    """Bytes a row reads and writes: ``copy_qk`` q and k twice; ``stats`` q and k once plus the float8 sign
    tensors it writes (``save_bits`` False: no packed bits); None for the attention rows."""
    if name == "copy_qk":
        return 2 * (q.numel() + k.numel()) * q.element_size()
    if name == "stats":
        width = padded_dim(q.shape[-1])  # the sign tensors' width (one byte per channel)
        rows = q.numel() // q.shape[-1] + k.numel() // k.shape[-1]
        return (q.numel() + k.numel()) * q.element_size() + rows * width
    return None


def host_profile(fn, calls: int = 50) -> str:
    """cProfile's top 20 functions by own time over ``calls`` calls of ``fn``."""
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, nargs="*", default=list(range(len(SHAPES))))
    parser.add_argument("--out", default=None)
    parser.add_argument("--once", default=None, help="only call this row twice per shape (for ncu)")
    args = parser.parse_args()
    if args.once:
        for index in args.shapes:
            bsz, heads, n, dim = SHAPES[index]
            q, k, v = (torch.randn(bsz, heads, n, dim, device="cuda").to(torch.bfloat16) for _ in range(3))
            fn = rows_for(q, k, v, CallSpec(scale=dim ** -0.5))[args.once]
            fn(), fn()
            torch.cuda.synchronize()
        return
    records = []
    for index in args.shapes:
        bsz, heads, n, dim = SHAPES[index]
        gen = torch.Generator(device="cuda").manual_seed(n * dim + bsz)
        q, k, v = (torch.randn(bsz, heads, n, dim, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(3))
        spec = CallSpec(scale=dim ** -0.5)
        copy_rate = None
        for name, fn in rows_for(q, k, v, spec).items():
            wall = triton.testing.do_bench(fn, rep=200)
            gpu = triton.testing.do_bench_cudagraph(fn, rep=200)
            record = dict(shape=SHAPES[index], row=name, wall_ms=round(wall, 4), gpu_ms=round(gpu, 4),
                          kernels=kernel_times(fn))
            nbytes = moved_bytes(name, q, k)
            if nbytes is not None:
                record["gb_per_s"] = round(nbytes / gpu / 1e6, 1)
                if name == "copy_qk":
                    copy_rate = record["gb_per_s"]
            if name == "stats":
                record["of_copy"] = round(record["gb_per_s"] / copy_rate, 3)
            records.append(record)
            print(json.dumps(record), flush=True)
        if index == args.shapes[0]:
            print(host_profile(rows_for(q, k, v, spec)["gluon"]), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "hopper_profile.json"), "w") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
