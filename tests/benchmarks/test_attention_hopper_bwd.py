"""benchmarks/attention_hopper_bwd.py on the CPU: config parsing, the slice check's reference, the table."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import attention_hopper_bwd as ahb  # noqa: E402


def test_configs_parse_or_fail_before_gpu_time():
    cfg = ahb.parse_config("128x32x3")
    assert (cfg.block_m, cfg.block_n, cfg.stages, cfg.staged_rows) == (128, 32, 3, False)
    assert ahb.parse_config("64x32x2x1").staged_rows is True
    for bad in ("128x32", "128x32xa", "96x32x2", "64x32x2x1x1"):
        with pytest.raises(ValueError):
            ahb.parse_config(bad)


def test_slice_errors_are_zero_for_the_reference_itself_and_see_a_wrong_gradient():
    from bitlower import reference, reference_backward
    from bitlower.spec import CallSpec

    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(2, 3, 9, 16, generator=gen) for _ in range(4))
    spec = CallSpec(scale=0.25, grad_mode="ste", save_bits=True)
    saved = reference.forward(q, k, v, None, None, None, spec)
    grads = reference_backward.backward(do, v, None, *saved[1:], spec, 16, ahb.NEEDS)
    assert max(ahb.slice_errors(grads, q, k, v, do, spec)) < 1e-6  # float32 against float64
    wrong = (grads[0] * 1.1, grads[1], grads[2])
    assert ahb.slice_errors(wrong, q, k, v, do, spec)[0] > 0.05


def test_table_gives_ratios_to_cudnn_of_the_same_pass():
    result = dict(shape=[1, 2, 3, 64], mode="hamming", errors={"bwd gluon": [1e-3, 2e-3, 3e-3]},
                  ms={"bwd cudnn": 2.0, "bwd gluon": 1.0, "fwd+bwd cudnn": 3.0, "fwd+bwd bitlower gluon": 2.0},
                  timing={"bwd cudnn": "events", "bwd gluon": "graph"},
                  notes={"bwd gluon 64x64x2": "FAIL (dq, dk, dv errors 1, 1, 1)"})
    text = ahb.table([result])
    assert "| bwd gluon | 1.000 | graph | 2.00x | 1.0e-03, 2.0e-03, 3.0e-03 |" in text
    assert "| bwd cudnn | 2.000 | events | 1.00x |" in text
    assert "| fwd+bwd bitlower gluon | 2.000 | - | 1.50x |" in text
    assert "FAIL" in text
