"""Registers, spills and shared memory of every kernel one bitlower call launches, compiled for sm_90.

Question: how many registers per thread (and so how many warps per SM) does each forward/backward
kernel take at a SPEC §6 shape, before any GPU time is spent? Works without a GPU: the launchers run
on CPU tensors with ``torch.library.wrap_triton`` replaced by a recorder, and every recorded launch is
compiled by ``triton.compile`` for ``cuda:90`` with the JIT's specialisation (pointers and integers
divisible by 16 marked so, integers equal to 1 made constants), then read back with ``cuobjdump``.
Use the Triton version of the GPU machine for numbers that match it, e.g. a wheel unpacked into a
folder: ``PYTHONPATH=/tmp/t36 python benchmarks/kernel_resources.py --shape 4 --mode hamming``.
The outputs of the recorded calls are never computed (the CPU tensors stay uninitialised).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bitlower.codegen.configs import TileConfig
from bitlower.codegen.plan import CallFacts, DeviceFacts, KernelOptions, plan_backward, plan_forward
from bitlower.spec import CallSpec

SHAPES = [(256, 6, 197, 64), (64, 16, 256, 72), (32, 6, 1024, 64), (12, 6, 1680, 64), (8, 8, 4096, 64),
          (4, 16, 4096, 128), (1, 16, 16384, 64)]  # as benchmarks/attention.py
POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int32: "*i32",
                 torch.int8: "*i8", torch.uint8: "*u8", torch.int64: "*i64", torch.bool: "*i1"}
TARGET = GPUTarget("cuda", 90, 32)
GPU = DeviceFacts(cuda=True, capability=(9, 0))  # the device the launches are planned for


class Recorder:
    """Stands in for ``wrap_triton(kernel)``: ``[grid](*args, **kwargs)`` records the launch."""

    launches: list = []

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            Recorder.launches.append((self.kernel, args, kwargs))
        return launch


def specialise(kernel, args, kwargs, float_type: str = "fp32"):
    """``(signature, constexprs, attrs, options)`` as Triton's JIT would build them for this launch.

    ``float_type``: the type of Python float arguments, ``"fp32"`` as Triton's JIT types them, ``"fp64"``
    as Inductor types them in the code it generates for ``wrap_triton`` kernels on CUDA.
    """
    options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in kwargs}
    signature, constexprs, attrs = {}, {}, {}
    values = dict(zip(kernel.arg_names, args), **kwargs)
    values.update({key: value for key, value in options.items() if key in kernel.arg_names})  # Gluon: num_warps
    for index, param in enumerate(kernel.params):
        name, value = param.name, values.get(param.name, param.default)
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif hasattr(value, "block_shape") and hasattr(value, "layout"):  # a Gluon host TMA descriptor
            from triton.runtime.jit import mangle_type
            signature[name] = mangle_type(value)
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
                if value % 16 == 0 and not param.do_not_specialize:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = float_type
        elif value is None:
            signature[name], constexprs[name] = "constexpr", None
        else:
            raise TypeError(f"{kernel.__name__}: argument {name} of type {type(value).__name__}")
    return signature, constexprs, attrs, options


def compile_launch(kernel, args, kwargs, target=TARGET, float_type: str = "fp32"):
    """``(compiled, options)``: one recorded launch compiled for ``target`` (Gluon or tl kernels);
    ``float_type`` as ``specialise``."""
    signature, constexprs, attrs, options = specialise(kernel, list(args), dict(kwargs), float_type)
    source = ASTSource
    if getattr(kernel, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource
        source = GluonASTSource
    return triton.compile(source(kernel, signature, constexprs, attrs), target=target, options=options), options


def resources(kernel, args, kwargs, dump_to: str | None = None, target=TARGET) -> str:
    """One ``cuobjdump --dump-resource-usage`` line (registers, stack = spills, shared) of the launch.

    ``dump_to``: a folder that receives the launch's TTGIR, PTX and SASS (``<kernel>.<n>.ttgir`` ...).
    """
    compiled, options = compile_launch(kernel, args, kwargs, target)
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        dump = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", path],
                              capture_output=True, text=True, check=True)
        if dump_to:
            write_listings(compiled, path, bin_dir, dump_to, kernel.__name__)
    usage = next(line.strip() for line in dump.stdout.splitlines() if "REG:" in line)
    fields = dict(item.split(":") for item in usage.split())
    return (f"{kernel.__name__:34s} warps {options.get('num_warps', 4)} stages {options.get('num_stages', 3)}  "
            f"regs {fields['REG']:>3s}  spill-stack {fields['STACK']:>3s} B  shared {compiled.metadata.shared} B")


def write_listings(compiled, cubin: str, bin_dir: str, folder: str, name: str) -> None:
    """TTGIR, PTX and SASS of one compiled launch under ``folder`` (numbered per kernel name)."""
    os.makedirs(folder, exist_ok=True)
    index = sum(entry.startswith(name + ".") and entry.endswith(".ptx") for entry in os.listdir(folder))
    stem = os.path.join(folder, f"{name}.{index}")
    for key in ("ttgir", "ptx"):
        with open(f"{stem}.{key}", "w") as handle:
            handle.write(compiled.asm[key])
    sass = subprocess.run([os.path.join(bin_dir, "nvdisasm"), "-c", cubin], capture_output=True, text=True)
    with open(f"{stem}.sass", "w") as handle:
        handle.write(sass.stdout or sass.stderr)


def record_call(shape, mode: str, weighting: str, backward: bool, variant: str | None, config=None,
                bwd_config=None):
    """The launches of one forward (and backward) of bitlower at ``shape`` on uninitialised CPU tensors.

    The plans are made for an sm_90 device (``GPU``), so the recorded launches carry the GPU tile tables
    and bf16 dots, not the interpreter's tiles that CPU tensors would get from their own device. The backward is
    the tl.dot one (``backward="tldot"``; the Gluon backward, sm_90's default, is built by ``hopper_build``).
    """
    from bitlower.codegen.backward import backward as run_backward
    from bitlower.codegen.forward import forward as run_forward

    bsz, heads, n, dim = shape
    make = lambda: torch.empty(bsz, heads, n, dim, dtype=torch.bfloat16)  # noqa: E731
    q, k, v = make(), make(), make()
    spec = CallSpec(scale=dim ** -0.5, weighting=weighting, grad_mode=mode, save_bits=backward)
    a = b = None
    if weighting == "token":
        a, b = torch.ones(bsz, heads, n), torch.ones(bsz, heads, n)
    call = CallFacts.of(q, k, v)
    options = KernelOptions(forward=variant or "auto", forward_tiles=config.text if config else "",
                            backward_tiles=bwd_config.text if bwd_config else "", backward="tldot")
    plan = _planned(plan_forward(call, spec, GPU, options))
    Recorder.launches = []
    with mock.patch("torch.library.wrap_triton", Recorder):
        out, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, state = run_forward(q, k, v, a, b, None, spec, plan=plan)
        if backward:
            needs = (True, True, True, a is not None, b is not None, False)
            run_backward(torch.empty_like(out), v, None, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, state, spec,
                         dim, needs, out=out, kernel_plan=_planned(plan_backward(call, spec, GPU, options)))
    return Recorder.launches


def _planned(plan):
    """The plan, or a ValueError with the plan's reason (an uncovered shape or option)."""
    if isinstance(plan, str):
        raise ValueError(f"the kernels cannot run this call on sm_90: {plan}")
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[0, 1, 4], help="indices into SHAPES")
    parser.add_argument("--mode", default="hamming", choices=("hamming", "ste", "stopgrad"))
    parser.add_argument("--weighting", default="mean_abs", choices=("mean_abs", "token", "none"))
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--variant", default=None, choices=("auto", "v1", "v2"), help="forward kernel")
    parser.add_argument("--config", default=None, metavar="BNxBMxWxS",
                        help="forward tiles: block_n x block_m x warps x stages (default: the table)")
    parser.add_argument("--bwd-config", default=None, metavar="BNxBMxWxS", help="backward tiles, as --config")
    parser.add_argument("--dump", default=None, metavar="DIR", help="also write TTGIR, PTX and SASS here")
    args = parser.parse_args()
    print(f"Triton {triton.__version__}, target sm_90; mode {args.mode}, weighting {args.weighting}")
    config, bwd_config = (TileConfig(*map(int, text.split("x"))) if text else None
                          for text in (args.config, args.bwd_config))
    for index in args.shape:
        print(f"shape {SHAPES[index]}")
        for kernel, call_args, call_kwargs in record_call(SHAPES[index], args.mode, args.weighting,
                                                           not args.forward_only, args.variant, config,
                                                           bwd_config):
            print("  " + resources(kernel, call_args, call_kwargs, args.dump))


if __name__ == "__main__":
    main()
