"""Offline build check: every Gluon sm_90 variant and every tl.dot kernel compiles; registers, spills, smem.

Question: does each kernel bitlower can launch compile for the GPUs it targets, at the Triton version of
the GPU machine, and with how many registers, spill bytes and shared-memory bytes? Runs on a CPU machine
(CI): launches are recorded on uninitialised CPU tensors (``kernel_resources.Recorder`` for
``wrap_triton``, ``codegen.hopper.launcher._launch`` for the Gluon kernel) and compiled with
``triton.compile`` (``GluonASTSource`` for Gluon); registers and spill stack come from ``cuobjdump``,
and for Gluon kernels ``ptxas -v`` is re-run on the PTX to report its wgmma serialisation notes (C7514).
Gluon variants compile for sm_90 only; the tl.dot kernels for sm_80 and sm_90. Python float arguments
are typed fp32 as Triton's JIT types them (eager calls, Gluon), except for the tl.dot kernels at sm_90,
which get fp64 as Inductor's generated code types them for ``wrap_triton`` kernels on CUDA: both typings
of every tl.dot kernel compile (a float64 scalar reaching a float32 loop-carried value fails to compile).

    PYTHONPATH=<triton 3.6 folder> python benchmarks/hopper_build.py [--jobs 2] [--quick]

Also checks ``codegen.direct_launch`` against this Triton: its launch keys against the JIT's specialization
(``native_specialize_impl``) on sample arguments, and its argument order against the binder's for every recorded
Gluon launch. Exits 1 when any kernel fails to compile, a ``main`` Gluon variant spills, or a direct-launch check
fails.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_resources as kr  # noqa: E402

from bitlower.spec import CallSpec  # noqa: E402

SM80, SM90 = GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


@dataclass(frozen=True)
class Variant:
    """One Gluon forward call: shape ``(B, H, N, D, Dv)``, dtype, weighting, bias, save_bits, tiles."""

    name: str
    shape: tuple[int, int, int, int, int]
    dtype: torch.dtype = torch.bfloat16
    weighting: str = "mean_abs"
    bias: str = "none"
    save_bits: bool = False
    static_max: bool = True
    config: tuple[int, ...] | None = None  # (block_n, block_m, stages[, peel[, poly_exp[, mma_rowsum]]])
    main: bool = False  # a main config: must not spill


VARIANTS = [
    Variant("d64_mean_abs", (8, 8, 4096, 64, 64), main=True),
    Variant("d128_mean_abs", (4, 16, 4096, 128, 128), config=(64, 64, 2), main=True),  # structure (a)
    # the tile table's choice at this shape (3 consumers): 8 B spilled, one STL/LDL pair per consumer in the
    # partition set-up, none in the key loop (SASS, session 12); reported, not gating
    Variant("d128_table", (4, 16, 4096, 128, 128)),
    Variant("d64_fp16", (8, 8, 4096, 64, 64), dtype=torch.float16, main=True),
    Variant("d64_none", (8, 8, 4096, 64, 64), weighting="none", main=True),
    Variant("d64_token_head", (8, 8, 1024, 64, 64), weighting="token", bias="head"),
    Variant("d64_dense", (8, 8, 1024, 64, 64), bias="dense", main=True),
    Variant("d64_mask", (8, 8, 1024, 64, 64), bias="mask", main=True),
    Variant("vit_table_token", (16, 6, 197, 64, 64), weighting="token", bias="table"),
    Variant("d64_table_token", (8, 8, 4096, 64, 64), weighting="token", bias="table", main=True),
    Variant("d64_table", (8, 8, 4096, 64, 64), bias="table"),
    Variant("d72_dit", (64, 16, 256, 72, 72), main=True),
    Variant("d80", (2, 4, 333, 80, 80)),
    Variant("d96", (2, 4, 130, 96, 96)),
    # the value tail (Dv in (64, 96] as 64 + 16 / 32 channels) under the other structure-(a) loops
    Variant("d72_bn128", (16, 16, 1024, 72, 72), config=(128, 64, 2)),
    Variant("d72_peel", (16, 16, 1024, 72, 72), config=(64, 64, 2, 1)),
    Variant("d80_rowsum_mask", (2, 4, 333, 80, 80), bias="mask", config=(64, 64, 2, 0, 0, 1)),
    Variant("d64_v72_token", (2, 4, 333, 64, 72), weighting="token"),
    Variant("d72_maxnreg128", (16, 16, 1024, 72, 72), config=(64, 64, 2, 0, 0, 0, 0, 1, 128)),
    Variant("d64_train_bits", (8, 8, 1024, 64, 64), save_bits=True),
    Variant("d64_online_only", (8, 8, 1024, 64, 64), static_max=False),
    Variant("m32_d64", (8, 8, 4096, 64, 64), config=(64, 32, 2)),  # 32-key tiles: 84 registers, 6 CTAs per SM
    Variant("d64_bm128", (8, 8, 4096, 64, 64), config=(64, 128, 2)),
    Variant("d64_bn128", (8, 8, 4096, 64, 64), config=(128, 64, 2)),
    Variant("d64_s3", (8, 8, 4096, 64, 64), config=(64, 64, 3)),
    Variant("d64_peel", (8, 8, 4096, 64, 64), config=(64, 64, 2, 1)),
    Variant("d128_peel", (4, 16, 4096, 128, 128), config=(64, 64, 2, 1)),
    Variant("d128_bn128", (4, 16, 4096, 128, 128), config=(128, 64, 2)),
    Variant("d64_poly8", (8, 8, 4096, 64, 64), config=(64, 64, 2, 0, 8)),
    Variant("d64_poly4", (8, 8, 4096, 64, 64), config=(64, 64, 2, 0, 4)),
    Variant("d128_poly8", (4, 16, 4096, 128, 128), config=(64, 64, 2, 0, 8)),
    Variant("d64_mask_poly8", (8, 8, 1024, 64, 64), bias="mask", config=(64, 64, 2, 0, 8)),
    Variant("d64_rowsum", (8, 8, 4096, 64, 64), config=(64, 64, 2, 0, 0, 1)),
    Variant("d128_rowsum", (4, 16, 4096, 128, 128), config=(64, 64, 2, 0, 0, 1)),
    Variant("d64_mask_rowsum", (8, 8, 1024, 64, 64), bias="mask", config=(64, 64, 2, 0, 0, 1)),
    Variant("d64_bn128_rowsum", (8, 8, 4096, 64, 64), config=(128, 64, 2, 0, 0, 1)),
    Variant("ws2_d64", (8, 8, 4096, 64, 64), config=(64, 64, 2, 0, 0, 0, 2), main=True),
    Variant("ws2_d128", (4, 16, 4096, 128, 128), config=(64, 64, 2, 0, 0, 0, 2), main=True),
    Variant("ws3_d64", (8, 8, 4096, 64, 64), config=(64, 64, 3, 0, 0, 0, 3), main=True),
    Variant("ws3_d128", (4, 16, 4096, 128, 128), config=(64, 64, 3, 0, 0, 0, 3)),
    Variant("ws2_d128_bm128", (4, 16, 4096, 128, 128), config=(64, 128, 2, 0, 0, 0, 2)),
    Variant("ws2_d64_bm128", (8, 8, 4096, 64, 64), config=(64, 128, 2, 0, 0, 0, 2)),
    Variant("ws3_d64_rowsum", (8, 8, 4096, 64, 64), config=(64, 64, 3, 0, 0, 1, 3)),
    Variant("ws2_d128_rowsum", (4, 16, 4096, 128, 128), config=(64, 64, 2, 0, 0, 1, 2)),
    Variant("ws2_mask_rowsum_online", (1, 2, 1000, 64, 64), bias="mask", static_max=False,
            config=(64, 64, 2, 0, 0, 1, 2)),
    Variant("ws3_d64_rowsum_poly4", (8, 8, 4096, 64, 64), config=(64, 64, 3, 0, 4, 1, 3, 0)),
    Variant("ws3_d64_rowsum_poly8", (8, 8, 4096, 64, 64), config=(64, 64, 3, 0, 8, 1, 3, 0)),
    Variant("ws3_mask_poly4_online", (1, 2, 1000, 64, 64), bias="mask", static_max=False,
            config=(64, 64, 3, 0, 4, 0, 3, 0)),
    Variant("ws3_d64_free", (8, 8, 4096, 64, 64), config=(64, 64, 3, 0, 0, 0, 3, 0)),
    Variant("ws2_d64_s4", (8, 8, 4096, 64, 64), config=(64, 64, 4, 0, 0, 0, 2)),
    Variant("ws1_d64", (8, 8, 4096, 64, 64), config=(64, 64, 2, 0, 0, 0, 1)),
    Variant("ws2_d72_dit", (64, 16, 256, 72, 72), config=(64, 64, 2, 0, 0, 0, 2)),
    Variant("ws2_d64_mask", (8, 8, 1024, 64, 64), bias="mask", config=(64, 64, 2, 0, 0, 0, 2)),
    Variant("ws2_d64_token_head", (8, 8, 1024, 64, 64), weighting="token", bias="head",
            config=(64, 64, 2, 0, 0, 0, 2)),
    Variant("ws2_vit_table_token", (16, 6, 197, 64, 64), weighting="token", bias="table",
            config=(64, 64, 2, 0, 0, 0, 2)),
    Variant("ws2_d64_online_only", (8, 8, 1024, 64, 64), static_max=False, config=(64, 64, 2, 0, 0, 0, 2)),
    Variant("ws1_d64_online_only", (8, 8, 1024, 64, 64), static_max=False, config=(64, 64, 2, 0, 0, 0, 1)),
    Variant("ws1_dense_online_only", (1, 2, 1000, 64, 64), bias="dense", static_max=False,
            config=(64, 64, 2, 0, 0, 0, 1)),
    Variant("ws2_dense_online_only", (1, 2, 1000, 64, 64), bias="dense", static_max=False,
            config=(64, 64, 2, 0, 0, 0, 2)),
    Variant("ws2_d64_train_bits", (8, 8, 1024, 64, 64), save_bits=True, config=(64, 64, 2, 0, 0, 0, 2)),
]
QUICK = ("d64_mean_abs", "d128_mean_abs", "d72_dit", "d64_mask")


@dataclass(frozen=True)
class BwdVariant:
    """One Gluon backward call (``codegen.hopper.backward_launcher``): shape ``(B, H, N, D, Dv)``, mode, needs."""

    name: str
    shape: tuple[int, int, int, int, int]
    dtype: torch.dtype = torch.bfloat16
    weighting: str = "mean_abs"
    bias: str = "none"
    grad_mode: str = "hamming"
    needs: tuple[bool, ...] = (True, True, True, False, False, True)
    config: tuple[int, ...] | None = None  # (block_m, block_n, stages[, staged_rows])
    main: bool = False  # a main config: must not spill


BWD_VARIANTS = [
    BwdVariant("bwd_d64_hamming_mean_abs", (8, 8, 4096, 64, 64), main=True),
    BwdVariant("bwd_d128_hamming_mean_abs", (4, 16, 4096, 128, 128), main=True),
    BwdVariant("bwd_d64_hamming_none", (8, 8, 4096, 64, 64), weighting="none", main=True),
    BwdVariant("bwd_d64_hamming_token_head", (8, 8, 1024, 64, 64), weighting="token", bias="head",
               needs=(True, True, True, True, True, True), main=True),
    BwdVariant("bwd_d128_hamming_token_head", (4, 16, 1024, 128, 128), weighting="token", bias="head",
               needs=(True, True, True, True, True, True), main=True),
    BwdVariant("bwd_d64_hamming_dense", (8, 8, 1024, 64, 64), bias="dense", main=True),
    BwdVariant("bwd_d64_hamming_mask", (8, 8, 1024, 64, 64), bias="mask"),
    BwdVariant("bwd_vit_table_token", (16, 6, 197, 64, 64), weighting="token", bias="table",
               needs=(True, True, True, True, True, True)),
    BwdVariant("bwd_d64_stopgrad_fp16", (8, 8, 1024, 64, 64), dtype=torch.float16, grad_mode="stopgrad"),
    BwdVariant("bwd_d72_hamming", (64, 16, 256, 72, 72)),
    BwdVariant("bwd_d64_bn64", (8, 8, 4096, 64, 64), config=(64, 64, 2)),
    BwdVariant("bwd_d64_bm128_bn64", (8, 8, 4096, 64, 64), config=(128, 64, 2)),
    BwdVariant("bwd_d128_bn64", (4, 16, 4096, 128, 128), config=(64, 64, 2)),
    BwdVariant("bwd_d64_token_head_bn64", (8, 8, 1024, 64, 64), weighting="token", bias="head",
               needs=(True, True, True, True, True, True), config=(64, 64, 2)),
    BwdVariant("bwd_d64_s3", (8, 8, 4096, 64, 64), config=(64, 32, 3)),
    BwdVariant("bwd_d64_bm64", (8, 8, 4096, 64, 64), config=(64, 32, 2)),
    BwdVariant("bwd_d128_bm128", (4, 16, 4096, 128, 128), config=(128, 32, 2)),
    BwdVariant("bwd_d64_token_head_bm64", (8, 8, 1024, 64, 64), weighting="token", bias="head",
               needs=(True, True, True, True, True, True), config=(64, 32, 2)),
    BwdVariant("bwd_d64_staged", (8, 8, 4096, 64, 64), config=(64, 32, 2, 1)),
    BwdVariant("bwd_d64_staged_token_head", (8, 8, 1024, 64, 64), weighting="token", bias="head",
               config=(64, 32, 2, 1)),
    BwdVariant("bwd_d128_staged", (4, 16, 4096, 128, 128), config=(64, 32, 2, 1)),
    BwdVariant("bwd_d64_staged_ste", (8, 8, 4096, 64, 64), grad_mode="ste", config=(64, 32, 2, 1)),
    BwdVariant("bwd_d64_ste_mean_abs", (8, 8, 4096, 64, 64), grad_mode="ste", main=True),
    BwdVariant("bwd_d128_ste_mean_abs", (4, 16, 4096, 128, 128), grad_mode="ste", main=True),
    BwdVariant("bwd_d64_ste_token_head", (8, 8, 1024, 64, 64), weighting="token", bias="head", grad_mode="ste",
               needs=(True, True, True, True, True, True), main=True),
    BwdVariant("bwd_d64_ste_dense", (8, 8, 1024, 64, 64), bias="dense", grad_mode="ste"),
    BwdVariant("bwd_d64_ste_bm128", (8, 8, 4096, 64, 64), grad_mode="ste", config=(128, 32, 2)),
    BwdVariant("bwd_vit_ste_table_token", (16, 6, 197, 64, 64), weighting="token", bias="table", grad_mode="ste",
               needs=(True, True, True, True, True, True)),
]
BWD_QUICK = ("bwd_d64_hamming_mean_abs", "bwd_d128_hamming_mean_abs", "bwd_d64_hamming_token_head",
             "bwd_d64_ste_mean_abs")


def _inputs(var: Variant):
    bsz, heads, n, dim, dim_v = var.shape
    q, k = (torch.empty(bsz, heads, n, dim, dtype=var.dtype) for _ in range(2))
    v = torch.empty(bsz, heads, n, dim_v, dtype=var.dtype)
    a = b = bias = None
    grid = ()
    if var.weighting == "token":
        a, b = torch.ones(bsz, heads, n), torch.ones(bsz, heads, n)
    if var.bias == "head":
        bias = torch.zeros(heads, dtype=var.dtype)
    elif var.bias == "dense":
        bias = torch.zeros(1, heads, n, n, dtype=var.dtype)
    elif var.bias == "mask":
        bias = torch.ones(bsz, 1, n, n, dtype=torch.bool)
    elif var.bias == "table":
        from bitlower.relpos import table_rows
        grid = (14, 14, 1)  # 14 x 14 patches + cls = 197 tokens
        bias = torch.zeros(table_rows(14, 14), heads, dtype=var.dtype)
    spec = CallSpec(scale=dim ** -0.5, weighting=var.weighting, bias_kind=var.bias, grid=grid,
                    save_bits=var.save_bits)
    return q, k, v, a, b, bias, spec


def record_gluon(var: Variant):
    """``(gluon_launch, tl_launches)`` of one Gluon forward call, recorded on CPU tensors."""
    from bitlower.codegen.hopper import HopperConfig, launcher

    gluon_launches = []
    kr.Recorder.launches = []
    q, k, v, a, b, bias, spec = _inputs(var)
    config = HopperConfig(*var.config) if var.config else None
    record = lambda kernel, grid, args, kwargs: gluon_launches.append((kernel, args, kwargs))  # noqa: E731
    with mock.patch("torch.library.wrap_triton", kr.Recorder), mock.patch.object(launcher, "_launch", record):
        launcher.launch_hopper_forward(q, k, v, a, b, bias, spec, static_max=var.static_max, config=config)
    return gluon_launches[0], list(kr.Recorder.launches)


def _bwd_inputs(var: BwdVariant):
    """Uninitialised CPU operands of one backward call: what the forward saved, the output and dO."""
    from bitlower.packing import num_words

    bsz, heads, n, dim, dim_v = var.shape
    q, k, v, a, b, bias, spec = _inputs(Variant(var.name, var.shape, var.dtype, var.weighting, var.bias))
    spec = CallSpec(scale=spec.scale, weighting=spec.weighting, bias_kind=spec.bias_kind, grid=spec.grid,
                    grad_mode=var.grad_mode)
    words = num_words(dim)
    bits = torch.zeros(bsz, heads, n, 1, words, dtype=torch.int32)
    clip = torch.zeros(bsz, heads, n, 1, words if var.grad_mode == "ste" else 0, dtype=torch.int32)
    f32 = dict(dtype=torch.float32)
    saved = (torch.zeros(bsz, heads, n, **f32), bits, bits.clone(), clip, clip.clone(),
             torch.ones(bsz, heads, n, 1, **f32), torch.ones(bsz, heads, n, 1, **f32),
             torch.zeros(bsz, heads, n, 2, **f32))
    grad_out, out = (torch.zeros(bsz, heads, n, dim_v, dtype=var.dtype) for _ in range(2))
    return grad_out, v, bias, saved, spec, out


def record_gluon_bwd(var: BwdVariant):
    """``(gluon_launches, tl_launches)`` of one Gluon backward call (ste: key and query kernels), on CPU tensors."""
    from bitlower.codegen.hopper import backward_launcher
    from bitlower.codegen.hopper.backward_support import HopperBackwardConfig

    gluon_launches = []
    kr.Recorder.launches = []
    grad_out, v, bias, saved, spec, out = _bwd_inputs(var)
    record = lambda kernel, grid, args, kwargs: gluon_launches.append((kernel, args, kwargs))  # noqa: E731
    config = HopperBackwardConfig(*var.config) if var.config else None
    with mock.patch("torch.library.wrap_triton", kr.Recorder), mock.patch.object(backward_launcher, "_launch", record):
        backward_launcher.launch_hopper_backward(grad_out, v, bias, *saved, spec, var.shape[3], list(var.needs),
                                                 out=out, config=config)
    return gluon_launches, list(kr.Recorder.launches)


def ptxas_notes(ptx: str) -> str:
    """``ptxas -v`` spill line and wgmma notes (C75xx) of a PTX listing, one line."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "k.ptx")
        with open(path, "w") as handle:
            handle.write(ptx)
        run = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", path, "-o", path + ".cubin"],
                             capture_output=True, text=True)
    text = run.stderr
    codes = sorted({part.split(")")[0] for part in text.split("(C")[1:]})
    spill = next((line.strip() for line in text.splitlines() if "spill stores" in line), "?")
    return f"{spill}; notes {' '.join('C' + code for code in codes) or 'none'}"


def _usage(compiled) -> tuple[int, int]:
    """``(registers, stack bytes)`` from the cubin (``cuobjdump --dump-resource-usage``)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "k.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        dump = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", path],
                              capture_output=True, text=True, check=True)
    line = next(line for line in dump.stdout.splitlines() if "REG:" in line)
    fields = dict(item.split(":") for item in line.split())
    return int(fields["REG"]), int(fields["STACK"])


WORK: list = []  # the jobs, set before the (forked) pool starts: kernels and tensors do not pickle


def build(index: int):
    """Compile job ``WORK[index]`` ``(label, kernel, args, kwargs, target, main, vector_rows)``; a result row (never
    raises). ``vector_rows``: every 16-bit row the launch reads is 16-byte aligned (no bias tile of odd length)."""
    label, kernel, args, kwargs, target, main, vector_rows = WORK[index]
    start = time.time()
    try:
        compiled, options = kr.compile_launch(kernel, args, kwargs, target, float_type(kernel, target))
        regs, stack = _usage(compiled)
        ptx = compiled.asm["ptx"]
        notes = ptxas_notes(ptx) if kernel.is_gluon() else ""
        return dict(label=label, arch=target.arch, ok=True, regs=regs, stack=stack, main=main,
                    shared=compiled.metadata.shared, warps=options.get("num_warps", 4), notes=notes,
                    scalar_loads=ptx.count("ld.global.b16"), vector_rows=vector_rows, seconds=time.time() - start)
    except Exception:  # noqa: BLE001 - a compile failure is the result being reported
        chars = int(os.environ.get("BUILD_ERROR_CHARS", 600))  # of the traceback's end
        return dict(label=label, arch=target.arch, ok=False, error=traceback.format_exc(limit=3)[-chars:],
                    main=main, seconds=time.time() - start)


def float_type(kernel, target) -> str:
    """``"fp64"`` (Inductor's typing) for tl.dot kernels at sm_90, else ``"fp32"`` (the JIT's); module notes."""
    return "fp64" if target.arch == 90 and not kernel.is_gluon() else "fp32"


def _key(kernel, args, kwargs, arch):
    signature, constexprs, _, options = kr.specialise(kernel, list(args), dict(kwargs))
    return kernel.__name__, arch, tuple(sorted(signature.items())), repr(sorted(constexprs.items())), repr(options)


def jobs(quick: bool, only: str = ""):
    """Every distinct compile: the Gluon variants (sm_90) and the tl.dot launches (sm_80 and sm_90);
    ``only``: the Gluon forward variants whose names start with it, nothing else."""
    seen, out = set(), []

    def add(label, kernel, args, kwargs, targets, main=False, vector_rows=False):
        for target in targets:
            key = _key(kernel, args, kwargs, target.arch)
            if key not in seen:
                seen.add(key)
                out.append((label, kernel, args, kwargs, target, main, vector_rows))

    for var in VARIANTS:
        if (quick and var.name not in QUICK) or not var.name.startswith(only):
            continue
        (kernel, args, kwargs), tl_launches = record_gluon(var)
        add(f"gluon {var.name}", kernel, args, kwargs, (SM90,), var.main)
        for tl_kernel, tl_args, tl_kwargs in tl_launches:
            add(f"{tl_kernel.__name__} ({var.name})", tl_kernel, tl_args, tl_kwargs, (SM80, SM90))
    if only:
        return out
    for var in BWD_VARIANTS:
        if quick and var.name not in BWD_QUICK:
            continue
        gluon_launches, tl_launches = record_gluon_bwd(var)
        for kernel, args, kwargs in gluon_launches:
            suffix = " (q)" if kernel.__name__.startswith("_binary_attn_bwd_q") else ""
            add(f"gluon {var.name}{suffix}", kernel, args, kwargs, (SM90,), var.main)
        for tl_kernel, tl_args, tl_kwargs in tl_launches:
            add(f"{tl_kernel.__name__} ({var.name})", tl_kernel, tl_args, tl_kwargs, (SM80, SM90))
    shapes = (0,) if quick else (0, 1)
    for index in shapes:
        for variant, mode in (("v1", "ste"), ("v2", "hamming")):
            for tl_kernel, tl_args, tl_kwargs in kr.record_call(kr.SHAPES[index], mode, "mean_abs", True, variant):
                add(f"{tl_kernel.__name__} ({variant} {mode} S{index})", tl_kernel, tl_args, tl_kwargs, (SM80, SM90),
                    vector_rows=True)
    return out


def row(result) -> str:
    if not result["ok"]:
        return f"FAIL {result['label']:44s} sm_{result['arch']}\n{result['error']}"
    return (f"ok   {result['label']:44s} sm_{result['arch']} warps {result['warps']:>2}  regs {result['regs']:>3}  "
            f"spill-stack {result['stack']:>4} B  shared {result['shared']:>6} B  2-byte loads {result['scalar_loads']:>3}  "
            f"{result['seconds']:4.1f} s  {result['notes']}")


def direct_launch_problems(work) -> list[str]:
    """``codegen.direct_launch`` against this Triton: its argument keys against ``native_specialize_impl``
    on sample arguments, and for every recorded Gluon launch a key for each argument and the binder's value order."""
    import inspect

    from bitlower.codegen import direct_launch

    problems = direct_launch.check_keys()
    for label, kernel, args, kwargs, *_ in work:
        if not kernel.is_gluon():
            continue
        try:
            [direct_launch.argument_key(arg) for arg in args]
        except TypeError as err:
            problems.append(f"{label}: {err}")
        params = [p.name for p in kernel.params]
        bound = inspect.signature(kernel.fn).bind(*args, **{k: v for k, v in kwargs.items() if k in params})
        bound.apply_defaults()
        if direct_launch.DirectLauncher(kernel).values(args, kwargs) != [bound.arguments[name] for name in params]:
            problems.append(f"{label}: the direct launch's argument order differs from the binder's")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="compile processes")
    parser.add_argument("--quick", action="store_true", help="the main variants and one tl.dot shape only")
    parser.add_argument("--only", default="", help="only the Gluon forward variants with this name prefix")
    args = parser.parse_args()
    start = time.time()
    print(f"Triton {triton.__version__} ({triton.__file__})", flush=True)
    WORK[:] = jobs(args.quick, args.only)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(build, range(len(WORK))))
    for result in results:
        print(row(result))
    failed = [r for r in results if not r["ok"]]
    spilled = [r for r in results if r["ok"] and r["main"] and r["stack"] > 0]
    # 16-bit operand rows read as 2-byte scalars in the SPEC-shape launches (contiguous q, k, v, no bias: every
    # row 16-byte aligned): a row stride whose alignment the kernel was not told (tiles.row_alignment; DiT's
    # D 72 did this until session 8). Bias tiles with rows of odd length (N 197) load scalars by nature.
    scalar = [r for r in results if r["ok"] and r["vector_rows"] and r["scalar_loads"] > 0]
    direct = direct_launch_problems(WORK)
    for problem in direct:
        print(f"FAIL direct launch: {problem}")
    print(f"{len(results)} compiles, {len(failed)} failed, {len(spilled)} main Gluon variants spill, "
          f"{len(scalar)} aligned-row launches with 2-byte scalar global loads, {len(direct)} direct-launch "
          f"problems; {time.time() - start:.0f} s")
    return 1 if failed or spilled or scalar or direct else 0


if __name__ == "__main__":
    sys.exit(main())
