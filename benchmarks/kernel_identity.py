"""Fingerprints of every tl.dot kernel launch a matrix of calls makes: masked TTIR and SASS census, sm_80/sm_90.

Question: does a source change (a refactor of the tl.dot kernels) leave the compiled kernels unchanged?
Launches are recorded on uninitialised CPU tensors (``kernel_resources.Recorder``) for a matrix of calls
(forward v1/v2, every weighting and bias kind, 8-bit P.V, static/online maximum, training bits, the
gathered table bias, the backward's modes and gradients), deduplicated by their JIT specialisation, and
compiled with the Triton on ``PYTHONPATH`` (the GPU machine's: 3.6). Each launch gets

- the TTIR fingerprint: the module after the TTIR passes with locations dropped, kernel arguments named
  by their parameter names and every other SSA value renumbered in order of first use (so a value
  renamed or a helper moved does not count, an operation added, removed or reordered does); the
  function's signature line (parameter list) is fingerprinted apart;
- an order-insensitive dataflow fingerprint (``dataflow_hash``): equal when only independent operations
  were emitted in another order;
- with ``--sass``: registers, spill stack and the SASS opcode census of the whole kernel.

    PYTHONPATH=/work/t36 python benchmarks/kernel_identity.py --out after.json [--sass]
    python benchmarks/kernel_identity.py --compare before.json after.json

Labels name the call (variant, weighting, bias, options) and the launch's kernel; a label whose
kernel was renamed still compares by its position in the call's launch list.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_resources as kr  # noqa: E402

from bitlower.relpos import table_rows  # noqa: E402
from bitlower.spec import CallSpec  # noqa: E402

TARGETS = (GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32))
SHAPES = {"vit": (2, 3, 197, 64), "dit": (2, 3, 256, 72), "long": (1, 2, 1024, 128)}
GRID = (14, 14, 1)  # 14 x 14 patches + cls = 197 tokens


def _inputs(shape, dtype, weighting, bias_kind):
    bsz, heads, n, dim = shape
    q, k, v = (torch.empty(bsz, heads, n, dim, dtype=dtype) for _ in range(3))
    a = b = bias = None
    if weighting == "token":
        a, b = torch.ones(bsz, heads, n), torch.ones(bsz, heads, n)
    if bias_kind == "head":
        bias = torch.zeros(heads, dtype=dtype)
    elif bias_kind == "table":
        bias = torch.zeros(table_rows(*GRID[:2]), heads, dtype=dtype)
    elif bias_kind == "dense":
        bias = torch.zeros(1, heads, n, n, dtype=dtype)
    elif bias_kind == "mask":
        bias = torch.ones(bsz, 1, n, n, dtype=torch.bool)
    return q, k, v, a, b, bias


def forward_calls():
    """``(label, shape, dtype, variant, spec kwargs, static_max, table_dense)`` of the forward matrix."""
    for variant in ("v1", "v2"):
        for weighting in ("mean_abs", "token", "none"):
            for bias_kind in ("none", "head", "table", "dense", "mask"):
                shape = "vit" if bias_kind == "table" else "dit" if weighting == "token" else "vit"
                yield (f"{variant} {weighting} {bias_kind}", shape, torch.bfloat16, variant,
                       dict(weighting=weighting, bias_kind=bias_kind), True, None)
        for shape in ("dit", "long"):
            yield (f"{variant} mean_abs {shape}", shape, torch.bfloat16, variant, {}, True, None)
        for dtype in (torch.float16, torch.float32):
            yield f"{variant} mean_abs {dtype}", "vit", dtype, variant, {}, True, None
        yield f"{variant} online", "vit", torch.bfloat16, variant, {}, False, None
        yield (f"{variant} train ste", "vit", torch.bfloat16, variant, dict(save_bits=True, grad_mode="ste"),
               True, None)
        yield (f"{variant} train hamming token", "vit", torch.bfloat16, variant,
               dict(save_bits=True, grad_mode="hamming", weighting="token"), True, None)
    yield ("v2 table gather", "vit", torch.bfloat16, "v2", dict(weighting="token", bias_kind="table"), True, False)
    for weighting in ("mean_abs", "token"):
        yield (f"v1 int8 {weighting}", "vit", torch.bfloat16, "v1", dict(pv_quant="int8", weighting=weighting),
               True, None)


def backward_calls():
    """``(label, shape, spec kwargs, needs, with_out)`` of the backward matrix."""
    all_qkv = (True, True, True, False, False, False)
    for mode in ("ste", "hamming", "stopgrad"):
        for weighting in ("mean_abs", "token"):
            token = weighting == "token"
            needs = (True, True, True, token, token, False)
            for with_out in (True, False):
                yield (f"bwd {mode} {weighting} out={with_out}", "vit", dict(grad_mode=mode, weighting=weighting),
                       needs, with_out)
    for bias_kind in ("head", "table", "dense", "mask"):
        needs = all_qkv[:5] + (bias_kind != "mask",)
        yield f"bwd ste {bias_kind}", "vit", dict(bias_kind=bias_kind), needs, True
    yield "bwd ste int8", "vit", dict(pv_quant="int8"), all_qkv, True
    yield "bwd hamming dv only", "vit", dict(grad_mode="hamming"), (False, False, True, False, False, False), True
    yield "bwd ste long", "long", {}, all_qkv, True


def _spec(shape, kwargs, save_bits):
    grid = GRID if kwargs.get("bias_kind") == "table" else None
    extra = dict(kwargs)
    extra.setdefault("save_bits", save_bits)
    return CallSpec(scale=shape[-1] ** -0.5, grid=grid, **extra)


def record():
    """``[(label, kernel, args, kwargs)]`` of every launch of the call matrix (plans made for sm_90)."""
    from bitlower.codegen.backward import backward
    from bitlower.codegen.forward import forward
    from bitlower.codegen.forward_v2 import forward_v2
    from bitlower.codegen.plan import CallFacts, KernelOptions, plan_backward, plan_forward

    out = []

    def run(label, fn):
        kr.Recorder.launches = []
        with mock.patch("torch.library.wrap_triton", kr.Recorder):
            fn()
        for index, (kernel, args, kwargs) in enumerate(kr.Recorder.launches):
            out.append((f"{label} #{index}", kernel, args, kwargs))

    for label, shape_name, dtype, variant, kwargs, static_max, table_dense in forward_calls():
        shape = SHAPES[shape_name]
        spec = _spec(shape, kwargs, False)
        q, k, v, a, b, bias = _inputs(shape, dtype, spec.weighting, spec.bias_kind)
        options = KernelOptions(forward=variant, static_max=static_max)
        plan = plan_forward(CallFacts.of(q, k, v, bias), spec, kr.GPU, options)
        if table_dense is None:
            run(label, lambda: forward(q, k, v, a, b, bias, spec, plan=plan))
        else:
            run(label, lambda: forward_v2(q, k, v, a, b, bias, spec, plan, table_dense=table_dense))
    for label, shape_name, kwargs, needs, with_out in backward_calls():
        shape = SHAPES[shape_name]
        spec = _spec(shape, kwargs, True)
        q, k, v, a, b, bias = _inputs(shape, torch.bfloat16, spec.weighting, spec.bias_kind)
        call = CallFacts.of(q, k, v, bias)
        fplan = plan_forward(call, spec, kr.GPU, KernelOptions(forward="v1"))
        bplan = plan_backward(call, spec, kr.GPU)
        with mock.patch("torch.library.wrap_triton", kr.Recorder):
            saved = forward(q, k, v, a, b, bias, spec, plan=fplan)
        o, lse, qbits, kbits, qclip, kclip, a_eff, b_eff, state = saved
        run(label, lambda: backward(torch.empty_like(o), v, bias, lse, qbits, kbits, qclip, kclip, a_eff, b_eff,
                                    state, spec, shape[-1], needs, out=o if with_out else None, kernel_plan=bplan))
    return out


LOC = re.compile(r"\s*loc\((#loc\d*|\"[^\"]*\"(:\d+:\d+)?(\(#loc\d*\))?|callsite\(#loc\d* at #loc\d*\)|unknown)\)")
VALUE = re.compile(r"%[A-Za-z0-9_.$#-]+")


def ttir(kernel, args, kwargs, target):
    """The module after Triton's TTIR passes, as text."""
    from triton._C.libtriton import ir
    from triton.compiler.compiler import ASTSource, make_backend

    signature, constexprs, attrs, options = kr.specialise(kernel, list(args), dict(kwargs))
    src = ASTSource(kernel, signature, constexprs, attrs)
    backend = make_backend(target)
    opts = backend.parse_options(dict(options, **src.parse_options()))
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), context)
    stages = {}
    backend.add_stages(stages, opts, src.language)
    return str(stages["ttir"](module, {"target": target, "hash": "0", **opts.__dict__})), signature


def mask_ttir(text: str, kernel, signature) -> tuple[str, str]:
    """``(signature line, body)`` with locations dropped, arguments named, other values renumbered."""
    runtime = [name for name in kernel.arg_names if signature.get(name) != "constexpr"]
    lines = [line for line in text.splitlines() if not line.startswith("#loc") and line.strip()]
    body, head, names = [], "", {}

    def rename(match):
        token = match.group(0)
        if token[1:] in kernel.arg_names:  # Triton names the kernel's arguments after its parameters
            return token
        arg = re.fullmatch(r"%arg(\d+)", token)
        if arg and int(arg.group(1)) < len(runtime):
            return "%" + runtime[int(arg.group(1))]
        return names.setdefault(token, f"%v{len(names)}")

    for line in lines:
        line = LOC.sub("", line)
        if "tt.func" in line and not head:
            head = VALUE.sub(rename, re.sub(r"@\w+", "@kernel", line))
            continue
        body.append(VALUE.sub(rename, line))
    return head, "\n".join(body)


DEF = re.compile(r"(%[A-Za-z0-9_.$-]+)(?::\d+)? = ")


def dataflow_hash(text: str, kernel, signature) -> str:
    """Order-insensitive fingerprint: the multiset of operations, each value named by what computes it.

    A value's name is the hash of its defining line with the values it uses replaced by their names
    (recursively) and the enclosing region ops' names; so two listings with the same operations on the
    same inputs in another order (independent operations swapped) hash alike.
    """
    runtime = [name for name in kernel.arg_names if signature.get(name) != "constexpr"]
    names = {f"%arg{i}": "%" + name for i, name in enumerate(runtime)}
    names.update({"%" + name: "%" + name for name in kernel.arg_names})
    stack, items = [""], []
    for raw in text.splitlines():
        line = LOC.sub("", raw).strip()
        if not line or line.startswith("#loc"):
            continue
        if line.startswith("module") or "tt.func" in line:
            stack.append(stack[-1])  # the signature is fingerprinted apart
            continue
        if line.startswith("}"):
            stack.pop()
            line = line[1:].strip()
            if not line:
                continue
        if line.startswith("^bb"):  # a region's block arguments (reductions): defined here, typed
            defs = re.findall(r"(%[A-Za-z0-9_.$-]+):", line)
            struct = "^bb(" + ", ".join(re.findall(r"%[A-Za-z0-9_.$-]+: ([^ ,)]+)", line)) + ")"
        else:
            defs = DEF.findall(line)
            struct = DEF.sub("<def> = ", line)

        def use(match):
            token = match.group(0)
            base, _, part = token.partition("#")
            return names.get(base, base) + ("#" + part if part else "")

        struct = VALUE.sub(use, struct)
        key = hashlib.sha256((stack[-1] + "|" + struct).encode()).hexdigest()[:20]
        for index, token in enumerate(defs):
            names[token] = f"%{key}.{index}"
        items.append(key if not os.environ.get("KERNEL_IDENTITY_ITEMS") else (key, stack[-1][:6], struct))
        if line.endswith("{"):
            stack.append(key)
    if os.environ.get("KERNEL_IDENTITY_ITEMS"):  # debugging: the structures behind the hash
        return items
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


def sass_census(kernel, args, kwargs, target) -> dict:
    """Registers, spill stack and the opcode census of the compiled kernel."""
    compiled, _ = kr.compile_launch(kernel, args, kwargs, target)
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "k.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-sass", path],
                              capture_output=True, text=True, check=True).stdout
    fields = dict(item.split(":") for item in next(l for l in usage.splitlines() if "REG:" in l).split())
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass)
    return {"regs": int(fields["REG"]), "stack": int(fields["STACK"]), "shared": compiled.metadata.shared,
            "census": dict(sorted(collections.Counter(ops).items()))}


def fingerprints(with_sass: bool) -> dict:
    rows, seen = {}, {}
    for label, kernel, args, kwargs in record():
        sig, constexprs, _, options = kr.specialise(kernel, list(args), dict(kwargs))
        key = (kernel.__name__, tuple(sorted(sig.items())), repr(sorted(constexprs.items())), repr(options))
        if key in seen:
            rows[label] = dict(rows[seen[key]], same_as=seen[key])
            continue
        seen[key] = label
        row = {"kernel": kernel.__name__}
        for target in TARGETS:
            text, signature = ttir(kernel, args, kwargs, target)
            head, body = mask_ttir(text, kernel, signature)
            row[f"sm{target.arch}"] = {"signature": hashlib.sha256(head.encode()).hexdigest()[:16],
                                       "params": head, "body": hashlib.sha256(body.encode()).hexdigest()[:16],
                                       "dataflow": dataflow_hash(text, kernel, signature)}
            if with_sass:
                row[f"sm{target.arch}"].update(sass_census(kernel, args, kwargs, target))
        rows[label] = row
        print(f"{label:48s} {kernel.__name__:32s} {row['sm90']['body']}", flush=True)
    return rows


def compare(before_path: str, after_path: str) -> int:
    """Print every launch whose fingerprint differs; 1 when any body differs."""
    before, after = (json.load(open(path)) for path in (before_path, after_path))
    bodies = sigs = reorders = 0
    for label in sorted(set(before) | set(after)):
        old, new = before.get(label), after.get(label)
        if old is None or new is None:
            print(f"only in {'after' if old is None else 'before'}: {label}")
            bodies += 1
            continue
        for arch in ("sm80", "sm90"):
            o, n = old[arch], new[arch]
            if o["body"] != n["body"]:
                same = o.get("dataflow") is not None and o.get("dataflow") == n.get("dataflow")
                bodies += not same
                reorders += same
                print(f"{'ORDER' if same else 'BODY'} {arch} {label}: {old['kernel']} -> {new['kernel']}")
            if o["signature"] != n["signature"]:
                sigs += 1
                print(f"SIGNATURE {arch} {label}:\n  - {o['params']}\n  + {n['params']}")
            for key in ("regs", "stack", "shared", "census"):
                if key in o and key in n and o[key] != n[key]:
                    print(f"SASS {key} {arch} {label}: {o[key]} -> {n[key]}")
    print(f"{len(after)} launches; {bodies} body differences, {reorders} same operations in another order, "
          f"{sigs} signature differences")
    return 1 if bodies else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the fingerprints (JSON) here")
    parser.add_argument("--sass", action="store_true", help="also compile to SASS: registers and opcode census")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    print(f"Triton {triton.__version__} ({triton.__file__})")
    rows = fingerprints(args.sass)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
