"""CPU checks of the Hopper forward's host side: the predicates, v's TMA repair, the operand widths, the build list.

Runs in CI's main pytest (Triton 3.9): nothing here compiles or skips; the sm_90 compile itself is the
separate CI step ``benchmarks/hopper_build.py`` under Triton 3.6.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from bitlower.codegen.hopper import HopperConfig, hopper_config, support
from bitlower.codegen.hopper.config import forward_sign_box, sign_chunks, value_split, value_width
from bitlower.spec import CallSpec

SM90 = (9, 0)


def _call(n=197, dim=64, dim_v=64, dtype=torch.bfloat16, **spec):
    q, k = torch.randn(2, 3, n, dim).to(dtype), torch.randn(2, 3, n, dim).to(dtype)
    v = torch.randn(2, 3, n, dim_v).to(dtype)
    return q, k, v, None, None, None, CallSpec(scale=dim ** -0.5, **spec)


@pytest.fixture
def gluon_ok(monkeypatch):
    """The Triton-API check passes (CI runs Triton 3.9; the other reasons are what is under test)."""
    monkeypatch.setattr(support, "gluon_unavailable", lambda version=None: None)


def test_accepts_a_plain_call(gluon_ok):
    assert support.hopper_tensors_unsupported(*_call(), capability=SM90) is None


@pytest.mark.parametrize("capability", [(8, 0), (10, 0), (12, 0)])
def test_refuses_other_capabilities(capability, gluon_ok):
    reason = support.hopper_tensors_unsupported(*_call(), capability=capability)
    assert "compute capability 9.x" in reason


def test_refuses_other_triton_versions():
    reason = support.hopper_tensors_unsupported(*_call(), capability=SM90, triton_version="3.9.0")
    assert "Triton 3.6" in reason and "3.9.0" in reason


def test_refuses_cpu_tensors_without_a_capability():
    assert "CUDA" in support.hopper_tensors_unsupported(*_call())


def test_refuses_mixed_dtypes(gluon_ok):
    q, k, v, a, b, bias, spec = _call()
    assert "one dtype" in support.hopper_tensors_unsupported(q.float(), k, v, a, b, bias, spec, capability=SM90)


def test_kernel_bias_codes_are_the_launchers():
    """kernel_sage_rows spells the bias codes itself (Gluon constexprs); they must be tiles.BIAS_CODES'."""
    from bitlower.codegen.hopper import kernel_sage_rows
    from bitlower.codegen.tiles import BIAS_CODES

    for kind in ("none", "head", "table", "dense", "mask"):
        assert getattr(kernel_sage_rows, f"BIAS_{kind.upper()}").value == BIAS_CODES[kind], kind


@pytest.mark.parametrize("change, words", [
    (dict(dtype=torch.float32), "float16/bfloat16"),
    (dict(weighting="bilinear"), "weighting"),
    (dict(pv_quant="int8"), "pv_quant"),
    (dict(dim=256), "D in"),
    (dict(dim=8), "D in"),
    (dict(dim_v=12), "multiple of 8"),
    (dict(dim_v=256), "Dv in"),
])
def test_refuses_uncovered_calls(change, words, gluon_ok):
    shape = {key: change.pop(key) for key in ("dtype", "dim", "dim_v") if key in change}
    reason = support.hopper_tensors_unsupported(*_call(**shape, **change), capability=SM90)
    assert reason is not None and words in reason, reason


def test_v_that_tma_cannot_read_is_copied_not_refused(gluon_ok):
    q, k, v, a, b, bias, spec = _call()
    offset = torch.empty(v.numel() + 1, dtype=v.dtype)[1:].view(v.shape).copy_(v)  # 2-byte storage offset
    channels_first = v.transpose(-1, -2).contiguous().transpose(-1, -2)  # last-dim stride N
    odd_rows = torch.randn(2, 3, 197, 68).to(v.dtype)[..., :64]  # rows of 136 bytes
    for bad, words in ((offset, "aligned"), (channels_first, "contiguous"), (odd_rows, "multiple of 16")):
        assert words in support._tma_reason("v", bad)
        assert support.hopper_tensors_unsupported(q, k, bad, a, b, bias, spec, capability=SM90) is None
        fixed = support.tma_readable(bad)
        assert fixed.data_ptr() != bad.data_ptr() and support._tma_reason("v", fixed) is None
        assert torch.equal(fixed, bad)


def test_accepts_permuted_but_aligned_v(gluon_ok):
    q, k, v, a, b, bias, spec = _call()
    packed = torch.randn(2, 197, 3, 64).to(torch.bfloat16).transpose(1, 2)  # (B, H, N, D) of a (B, N, H, D)
    assert support.hopper_tensors_unsupported(q, k, packed, a, b, bias, spec, capability=SM90) is None
    assert support.tma_readable(packed) is packed  # no copy


def test_table_bias_needs_self_attention(gluon_ok):
    q, k, v, a, b, _, _ = _call()
    spec = CallSpec(scale=0.125, bias_kind="table", grid=(14, 14, 1))
    k_short = k[:, :, :100]
    v_short = v[:, :, :100]
    assert "N == M" in support.hopper_tensors_unsupported(q, k_short, v_short, a, b, torch.zeros(731, 3), spec,
                                                          capability=SM90)


@pytest.mark.parametrize("dim, expected", [(16, (32, 1)), (32, (32, 1)), (64, (64, 1)), (72, (32, 3)),
                                           (80, (32, 3)), (96, (32, 3)), (100, (128, 1)), (128, (128, 1))])
def test_sign_chunks_pad_to_multiples_of_32(dim, expected):
    kc, nkc = sign_chunks(dim)
    assert (kc, nkc) == expected and kc * nkc >= dim and kc & (kc - 1) == 0


def test_value_width_is_a_power_of_two_cover():
    assert [value_width(d) for d in (16, 24, 64, 72, 128)] == [16, 32, 64, 128, 128]


def test_config_table_and_validation():
    assert hopper_config(4096, 64, 64) == HopperConfig(64, 64, 2)
    assert hopper_config(4096, 128, 128) == HopperConfig(64, 64, 3, consumers=3, pingpong=False)
    assert hopper_config(16384, 64, 64).rows_per_cta == 192
    assert HopperConfig(64, 64, 3, consumers=3).consumer_regs == 160
    assert hopper_config(256, 72, 72).num_warps == 4
    assert HopperConfig(128, 64, 2).num_warps == 8
    with pytest.raises(ValueError, match="block_n"):
        HopperConfig(32, 64, 2)
    with pytest.raises(ValueError, match="stages"):
        HopperConfig(64, 64, 1)
    assert HopperConfig(*map(int, "64x64x2x0x8".split("x"))).poly_exp == 8  # attention_hopper.py --configs
    assert HopperConfig(*map(int, "64x64x2x0x0x1".split("x"))).mma_rowsum is True
    with pytest.raises(ValueError, match="poly_exp"):
        HopperConfig(poly_exp=3)
    free = HopperConfig(*map(int, "64x64x3x0x0x0x3x0".split("x")))  # structure (b): 3 consumers, no turns
    assert (free.consumers, free.pingpong, free.num_warps, free.rows_per_cta) == (3, False, 4, 192)
    assert HopperConfig(consumers=2).consumer_regs == 240  # (512 - 24) / 2 capped at setmaxnreg's 240
    with pytest.raises(ValueError, match="consumers"):
        HopperConfig(consumers=4)
    with pytest.raises(ValueError, match="block_n 64"):
        HopperConfig(128, 64, 2, consumers=2)
    assert HopperConfig(*map(int, "64x64x2x0x0x0x0x1x128".split("x"))).maxnreg == 128
    for bad in (dict(maxnreg=100), dict(maxnreg=32), dict(maxnreg=128, consumers=2)):
        with pytest.raises(ValueError, match="maxnreg"):
            HopperConfig(**bad)


def _build_module():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "hopper_build.py")
    spec = importlib.util.spec_from_file_location("hopper_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_build_check_covers_the_issue_list():
    variants = _build_module().VARIANTS
    assert {v.weighting for v in variants} == {"mean_abs", "none", "token"}
    assert {v.bias for v in variants} == {"none", "head", "dense", "mask", "table"}
    assert {v.shape[3] for v in variants} >= {64, 72, 80, 96, 128}
    assert {v.dtype for v in variants} == {torch.bfloat16, torch.float16}
    assert any(v.save_bits for v in variants) and any(not v.static_max for v in variants)


def test_build_check_variants_are_supported_calls(gluon_ok):
    for v in _build_module().VARIANTS:
        call = _call(n=v.shape[2], dim=v.shape[3], dim_v=v.shape[4], dtype=v.dtype, weighting=v.weighting)
        assert support.hopper_tensors_unsupported(*call, capability=SM90) is None, v.name


def test_value_split_and_the_forward_sign_box():
    assert [value_split(d) for d in (64, 65, 72, 80, 96, 97, 128)] == [(64, 0), (64, 16), (64, 16), (64, 16),
                                                                        (64, 32), (128, 0), (128, 0)]
    assert [forward_sign_box(d) for d in (16, 24, 64, 72, 96, 128)] == [(32, 1), (32, 1), (64, 1), (128, 1), (128, 1),
                                                                        (128, 1)]
