"""Input checks for binary attention: each error names the argument and the constraint."""
from __future__ import annotations

import math
import numbers

import torch

from bitlower.relpos import table_rows
from bitlower.spec import BIAS_KINDS, GRAD_MODES, PV_QUANTS, WEIGHTINGS

MIN_HEAD_DIM = 8
MAX_HEAD_DIM = 256
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_choice(name: str, value, choices) -> None:
    """ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _check_float(name: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {x.dtype}")


def check_qkv(q, k, v) -> None:
    """Shapes ``(B, H, N, D)``, ``(B, H, M, D)``, ``(B, H, M, Dv)``, one dtype, one device."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x)
        _check_float(name, x)
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dims (B, H, L, D), got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[:2] != k.shape[:2] or q.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"q, k, v must agree in batch and heads (dims 0, 1), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length M (dim 2), got {k.shape[2]} and {v.shape[2]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head dim D (dim 3), got {q.shape[3]} and {k.shape[3]}")
    if not MIN_HEAD_DIM <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D of q and k must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {q.shape[3]}")


def check_scale(scale) -> float | torch.SymFloat:
    """A finite Python float; a ``SymFloat`` stays symbolic (``torch.compile(dynamic=True)``).

    Under dynamic shapes the default ``D ** -0.5`` is a ``SymFloat``: ``float()`` would
    specialize it and ``math.isfinite`` breaks Dynamo's graph, so the check is a comparison,
    which Dynamo traces (a guard where it cannot decide it) and which is False for nan and
    +-inf alike.
    """
    if isinstance(scale, torch.Tensor):
        raise TypeError("scale must be a Python number; fold tensor scales into q or k")
    symbolic = isinstance(scale, (torch.SymInt, torch.SymFloat))
    if not symbolic and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale must be a real number (int or float), got {type(scale).__name__} {scale!r}")
    scale = torch.sym_float(scale)  # float(scale) for numbers, a SymFloat for SymInt / SymFloat
    if not abs(scale) < math.inf:
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def check_scalars(name: str, x, q: torch.Tensor, length: int, planes: int) -> None:
    """Weighting scalars: floating, on q's device, shape ``(B, H, L)`` (``(B, H, L, 2)`` bilinear)."""
    if x is None:
        raise ValueError(f"{name} is required for weighting 'token' (shape (B, H, L))")
    _check_tensor(name, x)
    _check_float(name, x)
    expected = tuple(q.shape[:2]) + (length,) + ((planes,) if planes > 1 else ())
    if tuple(x.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if x.device != q.device:
        raise ValueError(f"{name} must be on {q.device}, got {x.device}")


def check_bias(bias, kind: str, grid, q, k) -> None:
    """The bias tensor matches its kind (SPEC §3)."""
    check_choice("bias_kind", kind, BIAS_KINDS)
    if kind == "none":
        if bias is not None:
            raise ValueError("bias must be None when bias_kind is 'none'")
        return
    _check_tensor("bias", bias)
    if bias.device != q.device:
        raise ValueError(f"bias must be on {q.device}, got {bias.device}")
    bsz, heads, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if kind == "mask":
        if bias.dtype != torch.bool:
            raise TypeError(f"bias of kind 'mask' must be torch.bool, got {bias.dtype}")
    else:
        _check_float("bias", bias)
    if kind == "head" and tuple(bias.shape) != (heads,):
        raise ValueError(f"bias of kind 'head' must have shape (H,) = ({heads},), got {tuple(bias.shape)}")
    if kind == "table":
        _check_table(bias, grid, heads, n, m)
    if kind in ("dense", "mask"):
        try:
            torch.broadcast_shapes(tuple(bias.shape), (bsz, heads, n, m))
        except RuntimeError:
            raise ValueError(
                f"bias of kind {kind!r} must broadcast to (B, H, N, M) = {(bsz, heads, n, m)}, "
                f"got {tuple(bias.shape)}") from None
        if bias.dim() > 4 or torch.broadcast_shapes(tuple(bias.shape), (bsz, heads, n, m)) != (bsz, heads, n, m):
            raise ValueError(f"bias of kind {kind!r} must not grow (B, H, N, M) = {(bsz, heads, n, m)}, "
                             f"got {tuple(bias.shape)}")


def check_grid(grid) -> None:
    """``(Gh, Gw, prefix_tokens)``: a tuple or list of three Python ints, ``Gh, Gw >= 1``, prefix >= 0.

    Raises:
        TypeError: not a tuple or list, or an entry that is not an int (floats, bools, strings).
        ValueError: not three entries, or an entry out of range.
    """
    if not isinstance(grid, (tuple, list)):
        raise TypeError(f"grid must be a tuple (Gh, Gw, prefix_tokens) of ints, got {type(grid).__name__} {grid!r}")
    if len(grid) != 3:
        raise ValueError(f"grid must be (Gh, Gw, prefix_tokens): three ints, got {len(grid)} entries {grid!r}")
    if any(isinstance(g, bool) or not isinstance(g, (numbers.Integral, torch.SymInt)) for g in grid):
        raise TypeError(f"grid must be (Gh, Gw, prefix_tokens) of ints, got {grid!r}")
    if min(grid[:2]) < 1 or grid[2] < 0:
        raise ValueError(f"grid must be (Gh, Gw, prefix_tokens) with Gh, Gw >= 1 and prefix_tokens >= 0, got {grid!r}")


def _check_table(bias, grid, heads: int, n: int, m: int) -> None:
    if grid is None:
        raise ValueError("grid must be (Gh, Gw, prefix_tokens) with Gh, Gw >= 1 for a table bias, got None")
    check_grid(grid)
    gh, gw, prefix = grid
    rows = table_rows(gh, gw)
    if tuple(bias.shape) != (rows, heads):
        raise ValueError(f"bias table for grid {gh}x{gw} must have shape ({rows}, {heads}), got {tuple(bias.shape)}")
    if n != m or n != prefix + gh * gw:
        raise ValueError(f"a table bias needs N == M == prefix + Gh*Gw = {prefix + gh * gw}, got N={n}, M={m}")


def check_modes(weighting: str, grad_mode: str, pv_quant: str, ste_clip) -> None:
    """Mode strings are known; the STE clip is positive."""
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("grad_mode", grad_mode, GRAD_MODES)
    check_choice("pv_quant", pv_quant, PV_QUANTS)
    if not (isinstance(ste_clip, (int, float)) and ste_clip > 0):
        raise ValueError(f"ste_clip must be a positive number, got {ste_clip!r}")
