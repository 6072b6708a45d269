"""Tile-config sweep of the fused kernels beside cuDNN (one question: which tiles are fastest per shape?).

Times the v1 forward (training and inference) per ``FWD_SWEEP`` config and the backward (hamming, ste)
per ``BWD_SWEEP`` config; the table in ``codegen/configs.py`` is this sweep's result
(benchmarks/kernel_notes.md, rounds 1 and 3). Overrides reach the plan as ``KernelOptions`` tile strings.

Usage: ``python benchmarks/attention_sweep.py --shapes 0,1,2,4,5 --out DIR`` (DIR/sweep.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from attention import SHAPES, _inputs, _sdpa
from bench_common import bench, guarded

log = logging.getLogger("bench")

FWD_SWEEP = [(128, 32, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 3), (64, 64, 4, 3),
             (64, 32, 4, 3), (128, 128, 8, 3), (64, 64, 8, 3)]
V2_SWEEP = [(128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (128, 128, 8, 2)]
BWD_SWEEP = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3), (32, 64, 4, 2), (32, 64, 4, 3), (128, 64, 8, 2),
             (64, 128, 8, 2), (32, 128, 8, 2)]


def _sweep(indices, out: str) -> None:
    """Time the forward/backward kernels per TileConfig beside cuDNN (tuning the table); ``out``/sweep.json.

    Forward: the training forward (``save_bits``) and the inference one; backward: hamming and ste.
    """
    from bitlower.codegen import KernelOptions, backward, forward
    from bitlower.spec import CallSpec
    from torch.nn.attention import SDPBackend

    record = []
    for i in indices:
        shape = SHAPES[i]
        q, k, v = _inputs(shape)
        entry = {"shape": shape, "cudnn_fwd": bench(lambda: _sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v))}
        qg, kg, vg = _inputs(shape, grad=True)
        do = torch.randn_like(v)
        cudnn = _sdpa(SDPBackend.CUDNN_ATTENTION)
        entry["cudnn_fwd_bwd"] = bench(lambda: torch.autograd.grad(cudnn(qg, kg, vg), (qg, kg, vg), do))
        for save_bits in (True, False):
            spec = CallSpec(scale=shape[3] ** -0.5, grad_mode="hamming", save_bits=save_bits)
            times = {}
            for cfg in FWD_SWEEP:
                options = KernelOptions(forward="v1", forward_tiles="x".join(map(str, cfg)))
                guarded(times, str(cfg), lambda o=options: forward(q, k, v, None, None, None, spec, o))
            entry["fwd_train" if save_bits else "fwd_infer"] = times
        for mode in ("hamming", "ste"):
            spec = CallSpec(scale=shape[3] ** -0.5, grad_mode=mode)
            saved = forward(q, k, v, None, None, None, spec)
            times = {}
            for cfg in BWD_SWEEP:
                options = KernelOptions(backward_tiles="x".join(map(str, cfg)))
                guarded(times, str(cfg), lambda o=options: backward(
                    do, v, None, *saved[1:], spec, shape[3], [True, True, True, False, False, False], o))
            entry[f"bwd_{mode}"] = times
        log.info("sweep %s", json.dumps(entry))
        record.append(entry)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "sweep.json"), "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(), "sweep": record}, fh, indent=1)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--shapes", default="0,1,2,4,5", help="comma-separated indices into attention.SHAPES")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _sweep([int(i) for i in args.shapes.split(",")], args.out)


if __name__ == "__main__":
    main()
