"""Shared builders for the codegen tests: random calls of every bias kind and weighting."""
from __future__ import annotations

import pytest
import torch

from bitlower.relpos import table_rows
from bitlower.spec import CallSpec


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` in float64; NaN anywhere in x counts as infinite error."""
    x64, r64 = x.double(), ref.double()
    if torch.isnan(x64).any():
        return float("inf")
    return float((x64 - r64).norm() / r64.norm().clamp_min(1e-300))


def strided(x: torch.Tensor) -> torch.Tensor:
    """The same values with non-contiguous strides (channels-last-like) and a storage offset."""
    bsz, heads, length, dim = x.shape
    pad = torch.empty(bsz, length, heads, dim + 3, dtype=x.dtype, device=x.device)
    pad[..., 1:dim + 1] = x.transpose(1, 2)
    return pad[..., 1:dim + 1].transpose(1, 2)  # (B, H, L, D), strides (L*H*(D+3), D+3, H*(D+3), 1)


def make_call(bsz=2, heads=2, n=19, m=23, dim=40, dim_v=24, *, weighting="mean_abs", bias_kind="none",
              grad_mode="ste", pv_quant="none", dtype=torch.float32, device="cpu", grid=None, noncontig=True,
              generator=None):
    """Random ``(q, k, v, a, b, bias, spec)``; a table bias sets ``n = m`` from its grid."""
    if bias_kind == "table":
        grid = grid or (3, 4, 1)
        n = m = grid[2] + grid[0] * grid[1]
    opts = dict(device=device, generator=generator)

    def randn(*shape):
        x = torch.randn(*shape, **opts).to(dtype)
        return strided(x) if noncontig and len(shape) == 4 else x

    q, k, v = randn(bsz, heads, n, dim), randn(bsz, heads, m, dim), randn(bsz, heads, m, dim_v)
    a = b = bias = None
    if weighting == "token":
        a = (torch.rand(bsz, heads, n, **opts) + 0.5).to(dtype)
        b = (torch.rand(bsz, heads, m, **opts) + 0.5).to(dtype)
    if bias_kind == "head":
        bias = torch.randn(heads, **opts).to(dtype)
    elif bias_kind == "table":
        bias = (0.5 * torch.randn(table_rows(grid[0], grid[1]), heads, **opts)).to(dtype)
    elif bias_kind == "dense":
        bias = torch.randn(1, heads, n, m, **opts).to(dtype)
    elif bias_kind == "mask":
        bias = torch.rand(bsz, 1, n, m, **opts) > 0.3
    spec = CallSpec(scale=dim ** -0.5, weighting=weighting, bias_kind=bias_kind,
                    grid=tuple(grid) if bias_kind == "table" else (), grad_mode=grad_mode, pv_quant=pv_quant)
    return q, k, v, a, b, bias, spec


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class _Helpers:
    make_call = staticmethod(make_call)
    strided = staticmethod(strided)
    rel_err = staticmethod(rel_err)


@pytest.fixture
def helpers():
    """The builders above (test modules cannot import conftest under --import-mode=importlib)."""
    return _Helpers
