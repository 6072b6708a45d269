"""Attention timing for ``bitlower demo`` and ``bitlower bench`` on machines without the benchmark suite.

What is measured depends on the device, and every row says which:

- CUDA: ``bitlower.binary_attention`` in eager mode (the fused Triton kernels where the call is
  supported, else the exact reference; the row names which ran, from ``bitlower.counters``)
  against ``F.scaled_dot_product_attention`` (PyTorch's choice of backend), bf16, forward,
  median of CUDA-graph replays, as ``benchmarks/attention.py`` times. Plain event timing
  includes Python launch overhead: at (256, 6, 197, 64) on an H100 the eager binary call took
  0.445 ms with events and 0.157 ms with graph replays (SDPA 0.089 and 0.085 ms; measured).
- CPU: ``bitlower.binary_attention`` compiled by ``torch.compile`` (Inductor compiles the exact
  reference; there are no CPU kernels) against eager ``F.scaled_dot_product_attention``,
  float32, forward, median wall time of ``CPU_REPEATS`` calls after one warm-up call. The
  reference materialises the (B, H, N, M) scores, so it is not expected to beat SDPA's fused
  CPU kernel: the row reports it, it does not claim a speed-up.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bitlower.counters import counters
from bitlower.functional import binary_attention

log = logging.getLogger(__name__)

# (B, H, N, D) shapes timed by default. CPU: the demo model's training batch (64 digits, 4 heads,
# 16 patches + cls, D 16), a ViT-S/16 224 layer at batch 8, and N 1024. CUDA: SPEC §6 shapes.
CPU_SHAPES = ((64, 4, 17, 16), (8, 6, 197, 64), (2, 6, 1024, 64))
CUDA_SHAPES = ((256, 6, 197, 64), (32, 6, 1024, 64), (8, 8, 4096, 64), (1, 16, 16384, 64))
CPU_REPEATS = 10
SEED = 0


@dataclass(frozen=True)
class TimingRow:
    """One timed shape.

    Attributes:
        shape: (B, H, N, D); M = N, Dv = D.
        dtype: dtype of q, k, v.
        sdpa_ms: median ms of ``F.scaled_dot_product_attention``.
        binary_ms: median ms of the binary path.
        binary_path: what ran for the binary row (``"fused Triton kernels"``,
            ``"exact reference, torch.compile (Inductor CPU)"``, or the reference with the
            fallback reason).
        compile_s: seconds spent compiling the binary path (CPU), 0 where nothing compiles.
    """

    shape: tuple[int, int, int, int]
    dtype: str
    sdpa_ms: float
    binary_ms: float
    binary_path: str
    compile_s: float = 0.0

    @property
    def speedup(self) -> float:
        """``sdpa_ms / binary_ms``: above 1 the binary path is faster."""
        return self.sdpa_ms / self.binary_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "speedup": self.speedup}


def describe_measurement(device: torch.device, repeats: int = CPU_REPEATS) -> str:
    """One sentence saying what ``time_attention`` measures on ``device``."""
    if device.type == "cuda":
        return ("CUDA, bf16, forward, median of CUDA-graph replays (triton.testing.do_bench_cudagraph; "
                "event timing where capture fails, named per row): eager bitlower.binary_attention "
                "(fused Triton kernels where supported) vs F.scaled_dot_product_attention")
    threads = torch.get_num_threads()
    return (f"CPU ({threads} thread{'s' if threads != 1 else ''}), float32, forward, median of {repeats} calls: "
            "bitlower.binary_attention compiled "
            "by torch.compile (exact reference through Inductor; no CPU kernels) vs eager "
            "F.scaled_dot_product_attention. The reference builds the full score matrix, so it is "
            "not expected to beat SDPA on CPU")


def _inputs(shape, dtype, device):
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    return tuple(torch.randn(*shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _time_cpu(shape, repeats: int) -> TimingRow:
    q, k, v = _inputs(shape, torch.float32, torch.device("cpu"))
    compiled = torch.compile(binary_attention, dynamic=False)
    start = time.perf_counter()
    compiled(q, k, v)  # the first call compiles
    compile_s = time.perf_counter() - start
    sdpa_ms = _median_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeats)
    binary_ms = _median_ms(lambda: compiled(q, k, v), repeats)
    return TimingRow(tuple(shape), "float32", sdpa_ms, binary_ms,
                     "exact reference, torch.compile (Inductor CPU)", compile_s)


def _cuda_medians(fns) -> tuple[list[float], str]:
    """Median ms of each function: CUDA-graph replays for all of them (launch overhead out of
    every row alike), or event timing for all of them where one refuses capture."""
    import triton.testing as tt

    try:
        return [float(tt.do_bench_cudagraph(fn, rep=100, return_mode="median")) for fn in fns], "cuda graphs"
    except Exception as err:  # noqa: BLE001 - any capture failure: time every row the other way
        log.warning("bitlower: CUDA-graph capture failed (%s: %s); event timing", type(err).__name__, err)
        torch.cuda.synchronize()
        return [float(tt.do_bench(fn, return_mode="median")) for fn in fns], "events, launch overhead included"


def _time_cuda(shape, device: torch.device) -> TimingRow:
    q, k, v = _inputs(shape, torch.bfloat16, device)
    before = dict(counters["fallback"])
    binary_attention(q, k, v)  # warm-up: Triton compiles the kernels here
    torch.cuda.synchronize(device)
    reasons = sorted(r for r, n in counters["fallback"].items() if n > before.get(r, 0))
    path = "exact reference (fallback: " + "; ".join(reasons) + ")" if reasons else "fused Triton kernels"
    (sdpa_ms, binary_ms), timer = _cuda_medians([lambda: F.scaled_dot_product_attention(q, k, v),
                                                 lambda: binary_attention(q, k, v)])
    return TimingRow(tuple(shape), "bfloat16", sdpa_ms, binary_ms, f"{path}; {timer}")


def time_attention(shapes=None, device: str | torch.device | None = None,
                   repeats: int = CPU_REPEATS) -> list[TimingRow]:
    """Time binary attention against SDPA at each shape (see the module docstring for what runs).

    Args:
        shapes: (B, H, N, D) tuples; None takes ``CUDA_SHAPES`` or ``CPU_SHAPES``.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        repeats: timed calls per measurement on CPU.

    Returns:
        one ``TimingRow`` per shape.

    Raises:
        ValueError: a shape that is not four positive ints.

    Example:
        >>> rows = time_attention([(1, 2, 16, 16)], device="cpu", repeats=2)  # doctest: +SKIP
        >>> rows[0].binary_path
        'exact reference, torch.compile (Inductor CPU)'
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = shapes if shapes is not None else (CUDA_SHAPES if dev.type == "cuda" else CPU_SHAPES)
    rows = []
    for shape in shapes:
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"a timing shape is (B, H, N, D) of positive ints, got {shape}")
        row = _time_cuda(shape, dev) if dev.type == "cuda" else _time_cpu(shape, repeats)
        log.info("bitlower: timed %s: SDPA %.3f ms, binary %.3f ms (%s)", shape, row.sdpa_ms, row.binary_ms,
                 row.binary_path)
        rows.append(row)
    return rows


def format_timing(measured: str, rows: list[dict]) -> str:
    """A plain-text table of ``TimingRow.to_dict()`` rows headed by what was measured."""
    lines = [f"Attention timing: {measured}.",
             f"{'shape (B, H, N, D)':<22} {'SDPA ms':>9} {'binary ms':>10} {'SDPA/binary':>12}  binary path"]
    for row in rows:
        shape = "(" + ", ".join(str(s) for s in row["shape"]) + ")"
        lines.append(f"{shape:<22} {row['sdpa_ms']:>9.3f} {row['binary_ms']:>10.3f} {row['speedup']:>11.2f}x  "
                     f"{row['binary_path']}")
    return "\n".join(lines)
