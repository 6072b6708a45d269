"""Which calls the Hopper Gluon forward covers: pure predicates, a reason string or None.

``hopper_forward_unsupported(call, spec, device)`` is the kernel plan's question (``codegen.plan``): it
reads only ``CallFacts`` (shapes, dtype, sizes), the spec, the compute capability and the Triton
version, so its answer holds for real and fake tensors alike and is final. What the plan cannot see,
v's data pointer and strides (TMA reads v over its own strides), the launcher repairs instead of
refusing: ``tma_readable`` gives v itself or a contiguous copy. ``hopper_tensors_unsupported`` asks the
same question of tensors (tests, benchmarks).

The kernel is written against the Gluon API of Triton 3.6 (``warpgroup_mma``/``warpgroup_mma_wait``,
``tma.async_copy_global_to_shared``, host ``TensorDescriptor``); later Triton releases rename parts
of it, so other versions are refused rather than guessed at.
"""
from __future__ import annotations

import functools
import importlib

import torch

from ..plan import CallFacts, DeviceFacts
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


def installed_triton() -> str | None:
    """The installed Triton's version string, or None without Triton."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


@functools.lru_cache(maxsize=None)
def gluon_unavailable(triton_version: str | None = None) -> str | None:
    """Why Triton ``triton_version`` (None: the installed one) cannot build the Gluon kernel, or None."""
    version = triton_version or installed_triton()
    if version is None:
        return "the Gluon sm_90 kernels need Triton (not installed)"
    if _version_tuple(version) != GLUON_TRITON:
        return (f"the Gluon sm_90 kernels are written against Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}'s Gluon, "
                f"found {version}")
    for module, names in _GLUON_SYMBOLS.items():
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            return f"the Gluon sm_90 kernels need {module} (missing)"
        missing = [name for name in names if not hasattr(loaded, name)]
        if missing:
            return f"the Gluon sm_90 kernels need {module}.{missing[0]} (missing)"
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


def tma_readable(v: torch.Tensor) -> torch.Tensor:
    """``v`` itself when TMA can read it over its own strides, else a fresh contiguous copy.

    The copy is TMA-readable for every call the predicate accepts: a fresh allocation is 16-byte
    aligned and contiguous rows of ``Dv % 8 == 0`` half-precision values are multiples of 16 bytes.
    ``clone`` (not ``contiguous``): a contiguous v at a misaligned storage offset must be copied too.
    """
    if _tma_reason("v", v) is None:
        return v
    return v.clone(memory_format=torch.contiguous_format)


def platform_reason(device: DeviceFacts, triton_version: str | None, kernels: str) -> str | None:
    """Why the device or the installed Triton cannot run the Gluon sm_90 ``kernels`` ("forward" or
    "backward"), or None: CUDA, compute capability 9.x, Triton 3.6's Gluon (``gluon_unavailable``)."""
    if not device.cuda or device.capability is None:
        return f"the Hopper {kernels} needs CUDA tensors"
    major, minor = device.capability
    if major != 9:
        return f"the Hopper {kernels} needs compute capability 9.x, got {major}.{minor}"
    reason = gluon_unavailable(triton_version or installed_triton())  # cached per version string
    return f"the Hopper {kernels}: {reason}" if reason else None


def hopper_forward_unsupported(call: CallFacts, spec, device: DeviceFacts, *,
                               triton_version: str | None = None) -> str | None:
    """Why ``launch_hopper_forward`` cannot run this call, or None when it can (the plan's question).

    Args:
        call: the operands' ``CallFacts`` (real or fake tensors).
        spec: the call's ``CallSpec``.
        device: where the tensors live and the compute capability.
        triton_version: the Triton version to judge; None takes the installed one.

    Returns:
        A reason string naming the operand and the constraint, or None.
    """
    reason = platform_reason(device, triton_version, "forward")
    if reason:
        return reason
    if call.dtype not in DTYPES:  # v's dtype: q and k share it (validation), the kernel reads only their signs
        return f"the Hopper forward takes float16/bfloat16 q, k, v, got {call.dtype}"
    if spec.weighting not in WEIGHTINGS:
        return f"the Hopper forward covers weighting {WEIGHTINGS}, got {spec.weighting!r}"
    if spec.pv_quant != "none":
        return f"the Hopper forward covers pv_quant 'none', got {spec.pv_quant!r}"
    if spec.bias_kind not in BIAS_KINDS:
        return f"the Hopper forward covers bias kinds {BIAS_KINDS}, got {spec.bias_kind!r}"
    return _shape_reason(call, spec)


def _shape_reason(call: CallFacts, spec) -> str | None:
    if not MIN_DIM <= call.dim <= MAX_HEAD_DIM:
        return f"the Hopper forward needs D in [{MIN_DIM}, {MAX_HEAD_DIM}], got {call.dim}"
    if not MIN_DIM <= call.dim_v <= MAX_HEAD_DIM or call.dim_v % 8:
        return (f"the Hopper forward needs Dv in [{MIN_DIM}, {MAX_HEAD_DIM}] and a multiple of 8 (16-byte V rows), "
                f"got {call.dim_v}")
    if spec.bias_kind == "table" and call.n != call.m:
        return "the Hopper forward's table bias needs self-attention (N == M)"
    if call.batch * call.heads > MAX_BATCH_HEADS:
        return f"the Hopper forward takes at most {MAX_BATCH_HEADS} batch*heads"
    if spec.bias_kind in ("dense", "mask") and call.n * call.m > MAX_TILE_OFFSET:  # a table is gathered per head
        return "the Hopper forward indexes one head's (N, M) bias with int32: N * M must be < 2**31"
    if call.empty:
        return "the Hopper forward needs non-empty tensors"
    return None


def hopper_tensors_unsupported(q, k, v, a, b, bias, spec, *, capability: tuple[int, int] | None = None,
                               triton_version: str | None = None) -> str | None:
    """``hopper_forward_unsupported`` asked of tensors (tests, benchmarks calling the launcher directly).

    Args:
        q, k, v, a, b, bias, spec: the operator's operands (as ``codegen.forward``).
        capability: the device's compute capability; None reads it from q's CUDA device.
        triton_version: the Triton version to judge; None takes the installed one.
    """
    if capability is None:
        if not q.is_cuda:
            return "the Hopper forward needs CUDA tensors"
        capability = torch.cuda.get_device_capability(q.device)
    if not q.dtype == k.dtype == v.dtype:
        return f"the Hopper forward takes q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    return hopper_forward_unsupported(CallFacts.of(q, k, v, bias), spec, DeviceFacts(True, tuple(capability)),
                                      triton_version=triton_version)
