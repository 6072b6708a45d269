"""The kernel plan: one pure function says which kernels run a call, with which tiles, or why none can.

Inputs are data only: ``CallFacts`` (shapes, dtypes, strides, sizes of the operands, from real or fake
tensors), the call's ``CallSpec``, ``DeviceFacts`` (where the tensors live, the compute capability) and
``KernelOptions`` (overrides: a forward kernel, tile configs; they travel as an operator argument, so
Inductor's caches key them). Nothing here reads a module attribute that callers flip or an environment
variable. The op body (``bitlower.ops``), the backend's fallback count (``passes.kernel_fallback``),
``explain``, the benchmarks and the tests all ask :func:`plan_forward` / :func:`plan_backward`.

Forward kernels (``ForwardPlan.kernel``):
- ``"v1"``: an option set of ``forward_kernel._binary_attn_fwd_kernel``: the word-load stats pass (bits
  always, eff rows, |x| sums), scalars finalised and max|b| / max|beta2| reduced in the kernel, a table
  bias gathered per score; the portable tl.dot path at non-power-of-two D and for 8-bit P.V.
- ``"v2"``: the same kernel with ``SCALARS_GIVEN``: the tile-load stats pass, maxima precomputed, a table
  bias materialised densely; measured faster for mean_abs at power-of-two D and for every table bias
  (benchmarks/kernel_notes.md, rounds 2 and 4).
- ``"hopper"``: the Gluon forward of ``codegen/hopper`` (compute capability 9.x, Triton 3.6): the default
  (``auto_forward``) at D = Dv in ``HOPPER_AUTO_DIMS`` from ``HOPPER_AUTO_MIN_WORK`` score work per call wherever
  ``hopper_forward_unsupported`` accepts the call, or asked for by ``KernelOptions(forward="hopper")`` (any D
  and size it covers).

Backward kernels (``BackwardPlan.kernel``):
- ``"tldot"``: the tl.dot kernels of ``codegen/backward_kernels.py`` (the portable path, every mode).
- ``"hopper"``: the Gluon backward of ``codegen/hopper/kernel_bwd*.py`` (compute capability 9.x,
  ``hamming``, ``stopgrad``, ``ste``) when ``KernelOptions(backward="hopper")`` asks for it, or by default
  for long key sequences at D, Dv <= 128 (``auto_backward``), where ``hopper_backward_unsupported`` accepts
  the call.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .configs import (DOT_BF16, DOT_FP16, DOT_FP32, INTERPRETER_CONFIG, MIN_PADDED_DIM, NARROW_PADDED_DIM,
                      TileConfig, backward_table, forward_table, forward_v2_table, padded_dim)

MIN_DIM, MAX_DIM = 16, 256  # head dims the tl.dot kernels take (int8 dot K >= 16; registers at 256)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_ELEMENTS = 2**31 - 1  # kernels index with int32 offsets inside one (batch, head)
MAX_BATCH_HEADS = 65535  # grid axis 1 holds batch * heads
FORWARD_CHOICES = ("auto", "v1", "v2", "hopper")
BACKWARD_CHOICES = ("auto", "tldot", "hopper")  # auto: auto_backward; tldot: the portable kernels forced
# Keys from which the Gluon backward is the default on sm_90 (D, Dv <= 128): every length since session 18, when its
# dq / dk pass (input_grads) and the smaller opaque operator made it faster than the tl.dot backward at every
# measured shape. H200, bf16 mean_abs, backward alone, Gluon vs tl.dot, ms: hamming 0.250 vs 0.430 at (256, 6, 197,
# 64), 0.282 vs 0.377 at (64, 16, 256, 72), 0.301 vs 0.438 at (32, 6, 1024, 64), 0.304 vs 0.451 at (12, 6, 1680,
# 64), 1.141 vs 1.870 at (8, 8, 4096, 64), 1.687 vs 2.865 at (4, 16, 4096, 128); ste 0.486 (N 197), 0.599 (N 1024),
# 2.314 (N 4096) against the tl.dot's 0.840, 0.888, 3.82 (session 8). Training steps (backward=hopper against the
# tl.dot default): DiT-B/2 512 29.72 vs 31.29 ms, ViT-S/8 320 38.29 vs 45.8 (e2e_speed / e2e_profile, session 18).
HOPPER_BACKWARD_MIN_KEYS = 1
HOPPER_BACKWARD_MAX_AUTO_DIM = 128
# head dims (D = Dv) at which the Gluon forward is the default on sm_90 (auto_forward); 72 / 80 / 96 since the value
# tail and the single sign box (session 15: (16, 16, 1024, 72) 0.239 ms against tl.dot 0.320; (8, 8, 1024, 96) 0.064
# against 0.086)
HOPPER_AUTO_DIMS = (64, 72, 80, 96, 128)
# Score work (B H N M D) below which the plan keeps the tl.dot forward on sm_90: the Gluon forward is launched from
# Python inside an opaque operator (~0.4 ms of host time per call on the H200 machine, session 14), while Inductor
# launches the tl.dot kernels itself. DiT-XL/2 256 (B 16, H 16, N 256, D 72: 1.2e9 per call, 0.37 ms of GPU time per
# block) ran 0.26x Inductor with the Gluon forward; ViT-S/16 224 (3.8e9) 0.96x, ViT-S/8 320 (3.1e10) 1.04x.
HOPPER_AUTO_MIN_WORK = 2**31


@dataclass(frozen=True)
class TileOverride:
    """A ``TileConfig`` given as an override (hashable, encodable)."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int

    def config(self) -> TileConfig:
        return TileConfig(self.block_n, self.block_m, self.num_warps, self.num_stages)


@dataclass(frozen=True)
class KernelOptions:
    """Overrides of the plan for one call (benchmarks, sweeps, tests).

    Args:
        forward: ``"auto"`` (the measured choice), ``"v1"``, ``"v2"`` or ``"hopper"`` (sm_90 Gluon).
        backward: ``"auto"`` (the measured choice, ``auto_backward``), ``"tldot"`` (the portable kernels) or
            ``"hopper"`` (sm_90 Gluon backward).
        forward_tiles, backward_tiles: ``"BNxBMxWxS"`` tile configs replacing the table's.
        static_max: False forces the online softmax in the forward.
        min_width: the floor of the tl.dot kernels' padded head dims (``configs.padded_dim``): 64, or 32
            (the narrower tiles that faulted on the H200; for sanitizer comparisons).
        hopper_stats: where the Gluon forward's stats pass runs: ``"graph"`` (the default: a traced pass before a
            narrower opaque operator, ``bitlower::hopper_main``; Inductor launches the stats kernel itself) or
            ``"op"`` (inside the opaque operator ``bitlower::hopper_fwd``). H200 (session 16): 679 -> 462 us of host
            time per compiled call at (16, 16, 256, 72); DiT-XL/2 512 inference 0.98x -> 0.99x Inductor.
        counted: the bitlower backend has counted this call's fallback (``passes.kernel_fallback`` sets
            it on every operator call of the graphs it compiles): bodies traced on fake tensors then
            leave ``counters["fallback"]`` alone. Not a plan choice.

    Raises:
        ValueError: an unknown forward or backward name, a malformed tile string or another ``min_width``.

    Example:
        >>> KernelOptions.decode(KernelOptions(forward="v1", forward_tiles="64x32x4x2").encode()).forward
        'v1'
    """

    forward: str = "auto"
    forward_tiles: str = ""
    backward_tiles: str = ""
    static_max: bool = True
    backward: str = "auto"
    min_width: int = MIN_PADDED_DIM
    hopper_stats: str = "graph"
    counted: bool = False

    def __post_init__(self):
        if self.forward not in FORWARD_CHOICES:
            raise ValueError(f"forward must be one of {FORWARD_CHOICES}, got {self.forward!r}")
        if self.backward not in BACKWARD_CHOICES:
            raise ValueError(f"backward must be one of {BACKWARD_CHOICES}, got {self.backward!r}")
        for name in ("forward_tiles", "backward_tiles"):
            parse_tiles(getattr(self, name))
        if self.hopper_stats not in ("op", "graph"):
            raise ValueError(f"hopper_stats must be 'op' or 'graph', got {self.hopper_stats!r}")
        if self.min_width not in (MIN_PADDED_DIM, NARROW_PADDED_DIM):
            raise ValueError(f"min_width must be {MIN_PADDED_DIM} or {NARROW_PADDED_DIM}, got {self.min_width!r}")

    def encode(self) -> str:
        """The operator argument: ``""`` for the defaults, else ``"key=value;..."`` of the changed fields."""
        default = KernelOptions()
        return ";".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) != getattr(default, f.name))

    @classmethod
    def decode(cls, text: str) -> "KernelOptions":
        """Inverse of :meth:`encode`."""
        values = dict(item.split("=", 1) for item in text.split(";") if item)
        for flag in ("static_max", "counted"):
            if flag in values:
                values[flag] = values[flag] == "True"
        if "min_width" in values:
            values["min_width"] = int(values["min_width"])
        return cls(**values)


def parse_tiles(text: str) -> TileConfig | None:
    """``"BNxBMxWxS"`` -> ``TileConfig``; ``""`` -> None."""
    if not text:
        return None
    parts = text.split("x")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"tile config must be 'BNxBMxWARPSxSTAGES', got {text!r}")
    return TileConfig(*(int(p) for p in parts))


@dataclass(frozen=True)
class DeviceFacts:
    """Where a call's tensors live. Kernels on CPU tensors run only under the Triton interpreter."""

    cuda: bool
    capability: tuple[int, int] | None = None

    @property
    def interpreter(self) -> bool:
        return not self.cuda

    @classmethod
    def of(cls, device: torch.device) -> "DeviceFacts":
        if device.type != "cuda":
            return cls(cuda=False)
        cap = torch.cuda.get_device_capability(device) if torch.cuda.is_available() else None
        return cls(cuda=True, capability=cap)


@dataclass(frozen=True)
class CallFacts:
    """Shapes and dtypes of one call's operands (real or fake tensors; sizes at their traced values)."""

    batch: int
    heads: int
    n: int
    m: int
    dim: int
    dim_v: int
    dtype: torch.dtype
    largest: int  # elements of the largest operand
    empty: bool

    @classmethod
    def of(cls, q, k, v, bias=None) -> "CallFacts":
        tensors = [t for t in (q, k, v, bias) if t is not None]
        return cls(int(q.shape[0]), int(q.shape[1]), int(q.shape[2]), int(k.shape[2]), int(q.shape[-1]),
                   int(v.shape[-1]), v.dtype, max(int(t.numel()) for t in tensors),
                   any(int(t.numel()) == 0 for t in tensors))


@dataclass(frozen=True)
class ForwardPlan:
    """The forward launches of one call: kernel family, tiles, dot operand type, softmax form, and the
    padded widths of the sign (``dim_p``) and value (``dim_vp``) tiles (tl.dot kernels; ``configs.padded_dim``);
    ``stats_in_graph``: the Gluon forward's stats pass traced before its opaque operator (``KernelOptions``'
    ``hopper_stats``)."""

    kernel: str
    tiles: TileConfig
    dot: int
    static_max: bool
    dim_p: int
    dim_vp: int
    stats_in_graph: bool = False


@dataclass(frozen=True)
class BackwardPlan:
    """The backward launches of one call: kernel family, tiles and dot operand types (the gradients:
    ``backward._Plan``). ``kernel`` "hopper": ``tiles``/``dot`` are the tl.dot table's, unused by the Gluon
    kernel (its tiles come from ``hopper.backward_support.hopper_backward_config``)."""

    tiles: TileConfig
    dot: int
    ds_dot: int
    kernel: str
    dim_p: int
    dim_vp: int


def dot_kind(dtype: torch.dtype, device: DeviceFacts) -> int:
    """Operand type of the floating dots (float32 under the interpreter: its bf16 dot is not exact)."""
    if device.interpreter or dtype == torch.float32:
        return DOT_FP32
    return DOT_FP16 if dtype == torch.float16 else DOT_BF16


def _common_reason(call: CallFacts, spec, dims: dict[str, int]) -> str | None:
    if call.dtype not in KERNEL_DTYPES:
        return f"codegen kernels take float16/bfloat16/float32, got {call.dtype}"
    if spec.weighting == "bilinear":
        return "codegen kernels do not cover bilinear (two-plane) weighting"
    for name, value in dims.items():
        if not MIN_DIM <= value <= MAX_DIM:
            return f"codegen kernels need {name} in [{MIN_DIM}, {MAX_DIM}], got {value}"
    if call.batch * call.heads > MAX_BATCH_HEADS:
        return f"codegen kernels take at most {MAX_BATCH_HEADS} batch*heads"
    if call.largest > MAX_ELEMENTS:
        return "codegen kernels index with int32: a tensor has more than 2**31 - 1 elements"
    if call.empty:
        return "codegen kernels need non-empty tensors"
    return None


def auto_forward(call: CallFacts, spec, device: DeviceFacts | None = None) -> str:
    """The forward measured faster for this call.

    ``"hopper"`` (the Gluon forward) on compute capability 9.x at D = Dv in ``HOPPER_AUTO_DIMS`` and at least
    ``HOPPER_AUTO_MIN_WORK`` score work per call, wherever it covers the call: as kernels faster than every tl.dot
    forward at every shape measured on the H200 (``benchmarks/RESULTS.md``: 0.118 vs 0.124 ms at N 197,
    1.20-1.33x cuDNN at N >= 1680 where v2 is 0.93-1.05x), and in whole timm ViTs (session 14, ``e2e_speed.py``:
    ViT-B/16 1024 1.09x Inductor, ViT-S/8 320 1.04x, ViT-S/16 224 0.96x, against 1.03x / 1.00x / 0.94x with the
    tl.dot forward). At D 72 / 80 / 96 since session 15's value tail and single sign box: 0.239 vs 0.320 ms at
    (16, 16, 1024, 72), DiT-XL/2 512 0.98x Inductor against 0.92-0.94x with the tl.dot forward. Small calls keep the
    tl.dot forward (``HOPPER_AUTO_MIN_WORK``): DiT-XL/2 256 ran 0.26x Inductor with the Gluon forward (1.06x with
    tl.dot), host-bound (kernel_notes.md, sessions 14-15).

    Else the tl.dot forward (benchmarks/kernel_notes.md, round 4): v2 for a table bias (1.2-4.8x over v1's
    gather) and for ``mean_abs`` at a power-of-two D (ViT-S 0.136 vs 0.144 ms, N 4096 0.611 vs 0.639); v1 at
    padded D (DiT D 72: 0.207 vs 0.226) and for 8-bit P.V.
    """
    hopper_device = (device is not None and device.cuda and device.capability is not None
                     and device.capability[0] == 9)
    work = call.batch * call.heads * call.n * call.m * call.dim
    measured = call.dim == call.dim_v and call.dim in HOPPER_AUTO_DIMS and work >= HOPPER_AUTO_MIN_WORK
    if hopper_device and measured and _hopper_reason(call, spec, device) is None:
        return "hopper"
    if spec.pv_quant != "none":
        return "v1"
    if spec.bias_kind == "table":
        return "v2"
    power_of_two = call.dim >= NARROW_PADDED_DIM and call.dim & (call.dim - 1) == 0
    return "v2" if spec.weighting == "mean_abs" and power_of_two else "v1"


def _hopper_reason(call: CallFacts, spec, device: DeviceFacts) -> str | None:
    """Why the Gluon Hopper forward cannot run this call (``codegen.hopper.support.hopper_forward_unsupported``).

    Imported here, not at module level: ``codegen/hopper`` imports this module (``CallFacts``). The
    answer is final: what the facts cannot show (v's TMA alignment) the hopper launcher repairs.
    """
    from .hopper.support import hopper_forward_unsupported

    return hopper_forward_unsupported(call, spec, device)


def plan_forward(call: CallFacts, spec, device: DeviceFacts, options: KernelOptions = KernelOptions()):
    """The ``ForwardPlan`` of a call, or the reason (a str) why the kernels cannot run it."""
    if not device.cuda and not device.interpreter:
        return "codegen kernels need a CUDA tensor"
    reason = _common_reason(call, spec, {"D": call.dim, "Dv": call.dim_v})
    if reason is None and spec.bias_kind == "table" and call.n != call.m:
        reason = "codegen table bias needs self-attention (N == M)"
    if reason is not None:
        return reason
    kernel = auto_forward(call, spec, device) if options.forward == "auto" else options.forward
    if kernel == "v2" and spec.pv_quant != "none":
        kernel = "v1"  # v2 has no 8-bit P.V
    if kernel == "hopper" and options.forward == "hopper":  # auto_forward picks it only where it has no reason
        hopper = _hopper_reason(call, spec, device)
        if hopper is not None:
            return hopper
    dp, dvp = padded_dim(call.dim, options.min_width), padded_dim(call.dim_v, options.min_width)
    tiles = parse_tiles(options.forward_tiles) or _forward_tiles(kernel, call, spec, device, dp, dvp)
    static = options.static_max and spec.bias_kind != "dense"  # no bound known for a caller's dense bias
    return ForwardPlan(kernel, tiles, dot_kind(call.dtype, device), static, dp, dvp,
                       kernel == "hopper" and options.hopper_stats == "graph")


def _forward_tiles(kernel: str, call: CallFacts, spec, device: DeviceFacts, dp: int, dvp: int) -> TileConfig:
    if device.interpreter:
        return INTERPRETER_CONFIG
    loaded_bias = spec.bias_kind in ("table", "dense", "mask")  # a bias tile staged with the K tile
    if kernel == "v2":
        return forward_v2_table(call.n, dp, dvp, call.dtype, loaded_bias)
    return forward_table(call.n, call.m, dp, dvp, call.dtype, loaded_bias)


def _hopper_backward_reason(call: CallFacts, spec, device: DeviceFacts) -> str | None:
    """Why the Gluon Hopper backward cannot run this call (``hopper.backward_support``; imported here for the
    same reason as ``_hopper_reason``)."""
    from .hopper.backward_support import hopper_backward_unsupported

    return hopper_backward_unsupported(call, spec, device)


def auto_backward(call: CallFacts, spec, device: DeviceFacts) -> str:
    """``"hopper"`` where the Gluon backward measured faster and covers the call, else ``"tldot"``.

    Faster at every measured key length (``HOPPER_BACKWARD_MIN_KEYS``) at D, Dv <= 128 on the H200 (numbers beside
    the constant).
    """
    long_keys = call.m >= HOPPER_BACKWARD_MIN_KEYS and max(call.dim, call.dim_v) <= HOPPER_BACKWARD_MAX_AUTO_DIM
    if device.cuda and device.capability is not None and device.capability[0] == 9 and long_keys:
        if _hopper_backward_reason(call, spec, device) is None:
            return "hopper"
    return "tldot"


def plan_backward(call: CallFacts, spec, device: DeviceFacts, options: KernelOptions = KernelOptions()):
    """The ``BackwardPlan`` of a call, or the reason (a str) why the kernels cannot run it.

    ``KernelOptions(backward="hopper")``: the Gluon backward, or the reason it cannot run the call (as
    ``forward="hopper"``: the call then takes the reference path, it does not silently change family).
    ``"auto"`` takes ``auto_backward``'s choice (the tl.dot backward wherever the Gluon one does not apply).
    """
    reason = _common_reason(call, spec, {"Dv": call.dim_v, "D": call.dim})
    if reason is None and options.backward == "hopper":
        reason = _hopper_backward_reason(call, spec, device)
    if reason is not None:
        return reason
    dot = dot_kind(call.dtype, device)
    dp, dvp = padded_dim(call.dim, options.min_width), padded_dim(call.dim_v, options.min_width)
    tiles = parse_tiles(options.backward_tiles)
    if tiles is None:
        tiles = INTERPRETER_CONFIG if device.interpreter else backward_table(call.n, call.m, dp, dvp, call.dtype)
    kernel = auto_backward(call, spec, device) if options.backward == "auto" else options.backward
    return BackwardPlan(tiles, dot, DOT_FP32 if dot == DOT_FP32 else DOT_BF16, kernel, dp, dvp)


def forward_plan(q, k, v, bias, spec, options: KernelOptions = KernelOptions()) -> ForwardPlan:
    """The ``ForwardPlan`` of a call on tensors; raises where the plan gives a reason (callers ask first).

    Raises:
        ValueError: the kernels cannot run the call (the plan's reason).
    """
    plan = plan_forward(CallFacts.of(q, k, v, bias), spec, DeviceFacts.of(q.device), options)
    if isinstance(plan, str):
        raise ValueError(f"the fused forward cannot run this call: {plan}")
    return plan


def describe_call(tensors: dict, kwargs: dict) -> dict:
    """``{"forward": kernel or "fallback: reason", "tiles": ..., "backward": kernel or "fallback: reason"}`` of a
    ``binary_attention`` call (reports)."""
    from bitlower.spec import CallSpec

    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    kind = kwargs.get("bias_kind", "none")
    spec = CallSpec(scale=1.0, weighting=kwargs.get("weighting", "mean_abs"), bias_kind=kind,
                    grad_mode=kwargs.get("grad_mode", "ste"), pv_quant=kwargs.get("pv_quant", "none"))
    if not q.is_cuda:
        return {"forward": "reference (CPU)"}
    call = CallFacts.of(q, k, v, tensors.get("bias"))
    options = kwargs.get("kernel_options") or KernelOptions()
    device = DeviceFacts.of(q.device)
    plan = plan_forward(call, spec, device, options)
    if isinstance(plan, str):
        return {"forward": f"fallback: {plan}"}
    bwd = plan_backward(call, spec, device, options)
    return {"forward": plan.kernel, "tiles": "x".join(str(x) for x in plan.tiles.__dict__.values()),
            "backward": f"fallback: {bwd}" if isinstance(bwd, str) else bwd.kernel}


def gpu_tiles(q, k, v, bias, spec, kernel: str) -> tuple[TileConfig, TileConfig]:
    """(forward, backward) tiles the GPU table gives this call with forward ``kernel`` (interpreter tests)."""
    gpu = DeviceFacts(cuda=True, capability=(9, 0))
    call = CallFacts.of(q, k, v, bias)
    fwd = plan_forward(call, spec, gpu, KernelOptions(forward=kernel))
    bwd = plan_backward(call, spec, gpu)
    return fwd.tiles, bwd.tiles
