"""Offline SASS census of a Gluon forward variant: which instructions its key-tile loop issues.

Compiles one ``hopper_build`` variant for sm_90 on the CPU machine (Triton of the GPU machine on
``PYTHONPATH``), disassembles it with Triton's ``cuobjdump`` and counts opcodes in the largest
backward-branch loop (the static-maximum key loop), so a change's instruction cost per score is
known before any device time: per score = loop count / (BLOCK_N * BLOCK_M / 32 lanes per warp ... ).

    PYTHONPATH=<triton 3.6 folder> python benchmarks/hopper_sass.py [d64_mean_abs ...] [--dump FILE]
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hopper_build as hb  # noqa: E402
import kernel_resources as kr  # noqa: E402

LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass(var) -> str:
    """SASS of a forward ``hb.Variant`` or of the key-side kernel of a backward ``hb.BwdVariant``."""
    if isinstance(var, hb.BwdVariant):
        gluon_launches, _ = hb.record_gluon_bwd(var)
        kernel, args, kwargs = next(x for x in gluon_launches if not x[0].__name__.startswith("_binary_attn_bwd_q"))
    else:
        (kernel, args, kwargs), _ = hb.record_gluon(var)
    compiled, _ = kr.compile_launch(kernel, args, kwargs, hb.SM90)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "k.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        return subprocess.run([os.path.join(hb.BIN, "cuobjdump"), "--dump-sass", path],
                              capture_output=True, text=True, check=True).stdout


def loops(text: str):
    """``[(start, end, [opcode, ...])]`` of each backward branch ``BRA`` target..branch, by address."""
    instrs = [(int(m.group(1), 16), m.group(3), m.group(4)) for m in LINE.finditer(text)]
    out = []
    for addr, op, rest in instrs:
        target = re.search(r"0x([0-9a-f]+)", rest)
        if op.startswith("BRA") and target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            out.append((start, addr, [o for a, o, _ in instrs if start <= a <= addr]))
    return out


def key_loop(found):
    """The static-maximum key loop: the shortest loop issuing the float8/int8 and the bf16 wgmma and the exp2
    (longer spans also holding them are the try-wait retry branches of the mbarrier waits)."""
    def has(body, name):
        return any(op.startswith(name) for op in body)

    keyed = [loop for loop in found if (has(loop[2], "QGMMA") or has(loop[2], "IGMMA")) and has(loop[2], "HGMMA")
             and has(loop[2], "MUFU")]
    return min(keyed or found, key=lambda loop: len(loop[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["d64_mean_abs"])
    parser.add_argument("--dump", default=None, help="write the full SASS of the first variant here")
    args = parser.parse_args()
    by_name = {v.name: v for v in hb.VARIANTS + hb.BWD_VARIANTS}
    for index, name in enumerate(args.variants):
        text = sass(by_name[name])
        if args.dump and index == 0:
            with open(args.dump, "w") as handle:
                handle.write(text)
        start, end, body = key_loop(loops(text))
        counts = collections.Counter(op.split(".")[0] for op in body)
        print(f"{name}: main loop {start:#x}..{end:#x}, {len(body)} instructions")
        print("  " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))


if __name__ == "__main__":
    main()
