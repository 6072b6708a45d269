"""Which calls the Hopper Gluon forward covers: one pure predicate, a reason string or None.

The kernel is written against the Gluon API of Triton 3.6 (``warpgroup_mma``/``warpgroup_mma_wait``,
``tma.async_copy_global_to_shared``, host ``TensorDescriptor``); later Triton releases rename parts
of it, so other versions are refused rather than guessed at.
"""
from __future__ import annotations

import functools
import importlib

import torch

from .config import MAX_HEAD_DIM

GLUON_TRITON = (3, 6)  # the Triton release whose Gluon API the kernel is written against
DTYPES = (torch.float16, torch.bfloat16)
WEIGHTINGS = ("mean_abs", "none", "token")
BIAS_KINDS = ("none", "head", "dense", "mask", "table")
MIN_DIM = 16
TMA_ALIGN = 16  # bytes: TMA needs a 16-byte aligned base and 16-byte multiples for every outer stride
MAX_BATCH_HEADS = 65535  # grid axis 1 holds batch * heads
MAX_TILE_OFFSET = 2**31 - 1  # row * stride offsets inside one (batch, head) are int32
_GLUON_SYMBOLS = {
    "triton.experimental.gluon": ("jit",),
    "triton.experimental.gluon.language.nvidia.hopper": ("warpgroup_mma", "warpgroup_mma_wait", "mbarrier", "tma"),
    "triton.experimental.gluon.nvidia.hopper": ("TensorDescriptor",),
}


def _version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@functools.lru_cache(maxsize=None)
def gluon_unavailable(triton_version: str | None = None) -> str | None:
    """Why the installed Triton cannot build the Gluon kernel (version, missing API), or None."""
    try:
        import triton
    except ImportError:
        return "the Hopper forward needs Triton (not installed)"
    version = triton_version or triton.__version__
    if _version_tuple(version) != GLUON_TRITON:
        return f"the Hopper forward is written against Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}'s Gluon, found {version}"
    for module, names in _GLUON_SYMBOLS.items():
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            return f"the Hopper forward needs {module} (missing)"
        missing = [name for name in names if not hasattr(loaded, name)]
        if missing:
            return f"the Hopper forward needs {module}.{missing[0]} (missing)"
    return None


def _tma_reason(name: str, x: torch.Tensor) -> str | None:
    """Why ``x`` cannot be read through a TMA descriptor over its own strides, or None."""
    size = x.element_size()
    if x.stride(-1) != 1:
        return f"the Hopper forward reads {name} by TMA: its last dim must be contiguous, stride {x.stride(-1)}"
    if x.data_ptr() % TMA_ALIGN:
        return f"the Hopper forward reads {name} by TMA: its data pointer must be {TMA_ALIGN}-byte aligned"
    for dim, (extent, stride) in enumerate(zip(x.shape[:-1], x.stride()[:-1])):
        if (stride * size) % TMA_ALIGN or (stride == 0 and extent > 1):
            return (f"the Hopper forward reads {name} by TMA: stride {stride} of dim {dim} must be a positive "
                    f"multiple of {TMA_ALIGN} bytes")
    return None


def hopper_forward_unsupported(q, k, v, a, b, bias, spec, *, capability: tuple[int, int] | None = None,
                               triton_version: str | None = None) -> str | None:
    """Why ``launch_hopper_forward`` cannot run this call, or None when it can.

    Args:
        q, k, v, a, b, bias, spec: the operator's operands (as ``codegen.forward``).
        capability: the device's compute capability; None reads it from q's CUDA device.
        triton_version: the Triton version to judge; None takes the installed one.

    Returns:
        A reason string naming the operand and the constraint, or None.
    """
    if capability is None:
        if not q.is_cuda:
            return "the Hopper forward needs CUDA tensors"
        capability = torch.cuda.get_device_capability(q.device)
    if capability[0] != 9:
        return f"the Hopper forward needs compute capability 9.x, got {capability[0]}.{capability[1]}"
    reason = gluon_unavailable(triton_version)
    if reason:
        return reason
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"the Hopper forward takes float16/bfloat16 q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if spec.weighting not in WEIGHTINGS:
        return f"the Hopper forward covers weighting {WEIGHTINGS}, got {spec.weighting!r}"
    if spec.pv_quant != "none":
        return f"the Hopper forward covers pv_quant 'none', got {spec.pv_quant!r}"
    if spec.bias_kind not in BIAS_KINDS:
        return f"the Hopper forward covers bias kinds {BIAS_KINDS}, got {spec.bias_kind!r}"
    dim, dim_v = q.shape[-1], v.shape[-1]
    if not MIN_DIM <= dim <= MAX_HEAD_DIM:
        return f"the Hopper forward needs D in [{MIN_DIM}, {MAX_HEAD_DIM}], got {dim}"
    if not MIN_DIM <= dim_v <= MAX_HEAD_DIM or dim_v % 8:
        return f"the Hopper forward needs Dv in [{MIN_DIM}, {MAX_HEAD_DIM}] and a multiple of 8 (16-byte V rows), got {dim_v}"
    if spec.bias_kind == "table" and q.shape[2] != k.shape[2]:
        return "the Hopper forward's table bias needs self-attention (N == M)"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"the Hopper forward takes at most {MAX_BATCH_HEADS} batch*heads"
    if spec.bias_kind in ("dense", "mask", "table") and q.shape[2] * k.shape[2] > MAX_TILE_OFFSET:
        return "the Hopper forward indexes one head's (N, M) bias with int32: N * M must be < 2**31"
    if any(t is not None and t.numel() == 0 for t in (q, k, v, bias)):
        return "the Hopper forward needs non-empty tensors"
    return _tma_reason("v", v)
