"""Property kit for the rewrite's safety: generated score graphs are rewritten exactly or left alone.

``scores_graphs()`` draws a ``ScoresGraph``: ``softmax(f(q' @ k'ᵀ)) @ v`` with

* the softmax in one of its spellings (``SOFTMAX_SPELLINGS``) over any axis (``SOFTMAX_DIMS``,
  ``None`` = no ``dim``), or SDPA;
* a factor on q, on k or on the scores (multiplied or divided), of every broadcast shape
  (``FACTOR_SHAPES``: one number, one per (batch, head), per query, per key, per score, per channel);
* an additive bias, and a mask by ``masked_fill`` / ``where`` / addition with an infinite or finite
  fill (``MASK_FILLS``), optionally with a query row masked everywhere.

``check_rewrite_or_left_alone(graph, seed)`` captures the graph with Dynamo, runs the bitlower
rewrite, and asserts the result equals the *binary reference* when the site was rewritten (the same
code with ``q' @ k'ᵀ`` replaced by ``mean|q'| mean|k'| sgn(q') sgn(k')ᵀ``, in float64) or eager
when it was left alone: never anything else, never an exception. NaN must be where the expected
result has NaN.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SOFTMAX_SPELLINGS = ("method", "torch.softmax", "F.softmax", "nn.Softmax", "torch.special.softmax", "sdpa")
SOFTMAX_DIMS = (-1, 3, -2, 2, 1, None)
FACTOR_PLACES = ("none", "scores", "q", "k")
FACTOR_SHAPES = ("number", "0d", "head", "one_head", "query", "key", "score", "channel")
MASK_FORMS = ("none", "masked_fill", "where", "additive")
MASK_FILLS = ("-inf", "finfo.min", "-1e9", "-100")


@dataclass(frozen=True)
class ScoresGraph:
    """One generated attention graph (see the module docstring).

    Attributes:
        softmax, dim: the spelling and axis (``dim`` ignored for ``"sdpa"``; None = no ``dim``).
        factor_at, factor_shape, factor_op: where a factor applies, its broadcast shape, ``mul``/``div``.
        bias: an additive float bias ``(N, M)`` on the scores (before the mask).
        round_trip: the bias is added on a view ``(B, 1, H, N, M)`` of the scores, viewed back
            (Swin's shifted-window form).
        mask, fill: how the mask applies and what masked scores get.
        fully_masked: query row 0 of batch 0 masked at every key.
        dtype, batch, heads, n, m, head_dim: input dtype and shapes.
        magnitude: q is drawn as ``magnitude * randn`` (large score magnitudes).
    """

    softmax: str = "method"
    dim: int | None = -1
    factor_at: str = "none"
    factor_shape: str = "number"
    factor_op: str = "mul"
    bias: bool = False
    round_trip: bool = False
    mask: str = "none"
    fill: str = "-inf"
    fully_masked: bool = False
    dtype: torch.dtype = torch.float32
    batch: int = 2
    heads: int = 2
    n: int = 8
    m: int = 8
    head_dim: int = 16
    magnitude: float = 1.0

    def factor_size(self) -> tuple[int, ...] | None:
        """Shape of the factor tensor; None for a Python number or no factor."""
        if self.factor_at == "none" or self.factor_shape == "number":
            return None
        shapes = {"0d": (), "head": (self.batch, self.heads, 1, 1), "one_head": (1, self.heads, 1, 1)}
        if self.factor_at == "scores":  # (.., N, M)
            shapes.update(query=(self.n, 1), key=(self.m,), score=(self.n, self.m), channel=(1, 1, 1, self.m))
        else:  # on q (.., N, D) or k (.., M, D): per token, per channel, per element
            length = self.m if self.factor_at == "k" else self.n
            shapes.update(query=(length, 1), key=(self.head_dim,), score=(length, self.head_dim),
                          channel=(self.head_dim,))
        return shapes[self.factor_shape]

    def fill_fits(self) -> bool:
        """Eager runs the graph: a masked_fill / additive fill must be representable in the dtype
        (``masked_fill(m, -1e9)`` on float16 scores raises)."""
        fill = self.written_fill()
        return self.mask in ("none", "where") or fill == float("-inf") or fill >= torch.finfo(self.dtype).min

    def written_fill(self) -> float:
        """The fill as the graph's source writes it."""
        return {"-inf": float("-inf"), "finfo.min": torch.finfo(self.dtype).min, "-1e9": -1e9,
                "-100": -100.0}[self.fill]

    def fill_value(self) -> float:
        """The fill as the graph's dtype holds it (``where(keep, s, -1e9)`` on float16 fills -inf), so a
        float64 run of the graph fills what eager fills."""
        return torch.tensor(self.written_fill(), dtype=torch.float64).to(self.dtype).item()

    def inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """``q, k, v`` and, where the graph takes them, ``w`` (factor), ``b`` (bias), ``m`` (True = masked)."""
        gen = torch.Generator().manual_seed(seed)
        b, h = self.batch, self.heads
        shapes = {"q": (b, h, self.n, self.head_dim), "k": (b, h, self.m, self.head_dim), "v": (b, h, self.m, 8)}
        out = {name: torch.randn(s, generator=gen).to(self.dtype) for name, s in shapes.items()}
        out["q"] = (out["q"].double() * self.magnitude).to(self.dtype)
        size = self.factor_size()
        if size is not None:
            out["w"] = (torch.rand(size, generator=gen) + 0.5).to(self.dtype)  # [0.5, 1.5): no zero divisor
        if self.bias:
            out["b"] = (0.5 * torch.randn(self.n, self.m, generator=gen)).to(self.dtype)
        if self.mask != "none":
            masked = torch.rand(b, 1, self.n, self.m, generator=gen) < 0.3
            masked[..., 0] = False  # every query keeps a key ...
            if self.fully_masked:
                masked[0, 0, 0] = True  # ... except row 0 of batch 0
            out["m"] = masked
        return out


def _factor(x, w, op: str, number: float):
    factor = number if w is None else w
    return x * factor if op == "mul" else x / factor


def _softmax(graph: ScoresGraph, s):
    dim = graph.dim
    if graph.softmax == "method":
        return s.softmax(-1 if dim is None else dim)
    if graph.softmax == "torch.softmax":
        return torch.softmax(s, -1 if dim is None else dim)
    if graph.softmax == "torch.special.softmax":
        return torch.special.softmax(s, -1 if dim is None else dim)
    if graph.softmax == "F.softmax":
        return F.softmax(s) if dim is None else F.softmax(s, dim=dim)
    return _nn_softmax(dim)(s)


@functools.lru_cache(maxsize=None)
def _nn_softmax(dim):
    return torch.nn.Softmax(dim=dim)


def build(graph: ScoresGraph, product=torch.matmul, scores: list | None = None):
    """The graph as a function of its named inputs; ``product`` computes ``q' @ k'ᵀ``.

    ``scores``, when given, receives the softmax's input (the masked scores) of each call (eager only).
    """
    scale = graph.head_dim ** -0.5

    def fn(q, k, v, w=None, b=None, m=None):
        if graph.factor_at == "q":
            q = _factor(q, w, graph.factor_op, 0.7)
        if graph.factor_at == "k":
            k = _factor(k, w, graph.factor_op, 0.7)
        if graph.softmax == "sdpa":
            return _sdpa(graph, q, k, v, b, m, product, scores)
        s = product(q, k.transpose(-2, -1)) * scale
        if graph.factor_at == "scores":
            s = _factor(s, w, graph.factor_op, 0.7)
        if b is not None and graph.round_trip:
            shape = s.shape
            s = (s.view(shape[0], 1, *shape[1:]) + b.view(1, 1, 1, *b.shape)).view(shape)  # (B, 1, H, N, M)
        elif b is not None:
            s = s + b
        s = _mask(graph, s, m)
        if scores is not None:
            scores.append(s)
        return _softmax(graph, s) @ v

    return fn


def _mask(graph: ScoresGraph, s, m):
    if m is None:
        return s
    fill = graph.written_fill() if s.dtype == graph.dtype else graph.fill_value()  # float64 runs: eager's fill
    if graph.mask == "masked_fill":
        return s.masked_fill(m, fill)
    if graph.mask == "where":
        return torch.where(~m, s, fill)
    return s + torch.zeros(m.shape, dtype=s.dtype, device=s.device).masked_fill(m, fill)


def _sdpa(graph: ScoresGraph, q, k, v, b, m, product, scores):
    mask = b
    if m is not None:
        mask = ~m if b is None else b.masked_fill(m, float("-inf"))
    if product is torch.matmul and scores is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=graph.head_dim ** -0.5)
    s = product(q, k.transpose(-2, -1)) * graph.head_dim ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    if scores is not None:
        scores.append(s)
    dead = torch.isneginf(s).all(-1, keepdim=True)  # SDPA gives 0 on rows without a kept key
    return torch.where(dead, 0.0, torch.softmax(s, -1)) @ v


def binary_product(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    """``mean|q| mean|k| sgn(q) sgn(k)ᵀ`` per (batch, head): what the rewrite computes for Q·Kᵀ.

    Computed in float64 and returned in q's dtype, so the rest of the graph rounds as eager does.
    """
    dtype = q.dtype
    q, kt = q.double(), kt.double()
    sgn = lambda x: torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # noqa: E731  (bitlower's sign: +1 at 0)
    a = q.abs().mean(dim=(-2, -1), keepdim=True)
    b = kt.abs().mean(dim=(-2, -1), keepdim=True)
    return ((a * sgn(q)) @ (b * sgn(kt))).to(dtype)


def assert_same(name: str, got: torch.Tensor, want: torch.Tensor, tol: float,
                extra: torch.Tensor | float = 0.0) -> None:
    """NaN exactly where ``want`` has NaN; elsewhere ``|got - want| <= tol * (1 + max|want|) + extra``
    (``extra``: a number, or a tensor of ``want``'s shape, element by element)."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), f"{name}: NaN at {torch.isnan(got).sum()} places, want {nan.sum()}"
    g, w = got.double()[~nan], want.double()[~nan]
    if w.numel():
        extra = torch.as_tensor(extra, dtype=torch.float64).expand(want.shape)[~nan]
        excess = (g - w).abs() - tol * (1.0 + w.abs().max().item()) - extra
        worst = int(excess.argmax())
        assert excess[worst] <= 0, (f"{name}: error {(g - w).abs()[worst].item():.3g} > "
                                    f"{(tol * (1.0 + w.abs().max()) + extra[worst]).item():.3g}")


def _capture(fn, named: dict) -> torch.fx.GraphModule:
    """The one Dynamo graph of ``fn(**named)``; placeholders are named ``L_<input>_``."""
    torch._dynamo.reset()
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=keep, fullgraph=True)(**named)
    assert len(graphs) == 1, f"expected one graph, Dynamo captured {len(graphs)}"
    return graphs[0]


def check_rewrite_or_left_alone(graph: ScoresGraph, seed: int = 0) -> str:
    """Capture, rewrite and run ``graph``; assert binary reference (rewritten) or eager (left alone).

    Returns:
        ``"rewritten"``, or the skip reason.
    """
    from bitlower.backend_config import BackendConfig
    from bitlower.passes.rewrite_attention import SITES_META_KEY, rewrite_attention
    from bitlower.testing import TOLERANCE, run_graph

    named = graph.inputs(seed)
    fn = build(graph)
    gm = rewrite_attention(_capture(fn, named), BackendConfig())
    reports = gm.meta[SITES_META_KEY]
    got = run_graph(gm, **named)
    rewritten = [r for r in reports if r.status == "rewritten"]
    want = build(graph, product=binary_product)(**named) if rewritten else fn(**named)
    assert_same(f"{graph} ({'rewritten' if rewritten else [r.reason for r in reports]})", got, want,
                TOLERANCE[graph.dtype])
    return "rewritten" if rewritten else (reports[0].reason if reports else "not_found")


def check_compiled_or_left_alone(graph: ScoresGraph, seed: int = 0, device: str = "cuda") -> str:
    """``torch.compile(backend="bitlower")`` on ``device`` (the fused kernels on CUDA) against the graph
    in float64 on the CPU: the binary reference (rewritten) or the graph as written (left alone).

    Compiled code forms the scores in another order than eager does, so the bound adds what rounding
    the scores allows (``rounding_bound``): at q magnitude 1e6 in float32 one score ulp is 0.06, larger
    than the bias differences that split tied binary scores; at 1e3 in float16 it is 0.5. Comparing with
    eager in the graph's own dtype instead would ask the kernels to reproduce eager's rounding (the
    float32 eager result of the first case is itself 0.05 from float64's).

    Returns:
        ``"rewritten"``, or ``"left_alone"``.
    """
    from bitlower.counters import counters
    from bitlower.testing import TOLERANCE

    named = graph.inputs(seed)
    torch._dynamo.reset()
    before = counters["sites_rewritten"].total()
    got = torch.compile(build(graph), backend="bitlower", fullgraph=True)(
        **{n: x.to(device) for n, x in named.items()})
    rewritten = counters["sites_rewritten"].total() > before
    scores = []
    exact = {n: x.double() if x.is_floating_point() else x for n, x in named.items()}
    want = build(graph, product=binary_product if rewritten else torch.matmul, scores=scores)(**exact)
    f32 = torch.finfo(torch.promote_types(graph.dtype, torch.float32)).eps / 2
    # unit roundoffs per score. Rewritten: the kernels' float32 scale, its product with the exact integer
    # score, the bias add. Left alone: four roundings in the dtype (product, scale, factor, bias: the most
    # any generated graph writes before its softmax) and the product's float32 sums (D of them, taken
    # relative to |s|, which holds without cancellation)
    units = 3 * f32 if rewritten else 4 * torch.finfo(graph.dtype).eps / 2 + graph.head_dim * f32
    extra = rounding_bound(graph, scores[0], exact.get("m"), exact["v"], units)
    assert_same(f"{graph} ({'rewritten' if rewritten else 'left alone'})", got.cpu(), want,
                TOLERANCE[graph.dtype], extra=extra)
    return "rewritten" if rewritten else "left_alone"


def softmax_axis(graph: ScoresGraph, rank: int) -> int:
    """The axis ``graph``'s softmax normalises (F.softmax without ``dim``: the implicit, deprecated one)."""
    if graph.softmax == "sdpa":
        return rank - 1
    if graph.dim is None:
        return F._get_softmax_dim("softmax", rank, 3) if graph.softmax in ("F.softmax", "nn.Softmax") else rank - 1
    return graph.dim % rank


def rounding_bound(graph: ScoresGraph, scores: torch.Tensor, masked, v: torch.Tensor,
                   units: float) -> torch.Tensor:
    """Per output element, how far ``softmax(s) @ v`` may move when each score moves by ``units * |s|``.

    With score perturbations ``|d_i| <= e_i`` and ``E`` their largest along the softmax axis,
    ``p'_i = p_i exp(d_i) / sum_j p_j exp(d_j)`` lies within ``p_i exp(+-(e_i + E))``, so
    ``|dp_i| <= min(1, p_i expm1(e_i + E))`` (no first-order step: at q magnitude 1e6 a perturbation can
    move the argmax), and ``|d out| <= |dp| @ |v|``. Scores a ``masked_fill`` / ``where`` mask sets are
    exact (the fill replaces them) and move by 0.
    """
    s = scores.double()
    axis = softmax_axis(graph, s.dim())
    size = s.abs().nan_to_num(0.0, posinf=0.0)  # -inf scores have p = 0
    if masked is not None and graph.mask in ("masked_fill", "where"):
        size = size.masked_fill(masked, 0.0)
    moves = units * size
    total = moves + moves.amax(axis, keepdim=True)
    log_growth = torch.where(total > 30, total, torch.log(torch.expm1(total)))  # log(expm1(t)), t > 0
    log_p = torch.log_softmax(s, axis)
    moved = torch.exp(torch.clamp(log_p + log_growth, max=0.0)).nan_to_num(0.0)  # rows keeping no key: 0
    return moved @ v.abs()


def scores_graphs(dtypes=(torch.float32, torch.float64), max_len: int = 10, head_dims=(8, 16),
                  magnitudes=(1.0,)):
    """A hypothesis strategy of ``ScoresGraph`` (needs ``hypothesis``).

    Args:
        dtypes, head_dims, magnitudes: the choices of input dtype, ``D`` and q's magnitude.
        max_len: the largest N and M (small keeps each capture fast).
    """
    from hypothesis import strategies as st

    return st.builds(
        ScoresGraph,
        softmax=st.sampled_from(SOFTMAX_SPELLINGS),
        dim=st.sampled_from(SOFTMAX_DIMS),
        factor_at=st.sampled_from(FACTOR_PLACES),
        factor_shape=st.sampled_from(FACTOR_SHAPES),
        factor_op=st.sampled_from(("mul", "div")),
        bias=st.booleans(),
        round_trip=st.booleans(),
        mask=st.sampled_from(MASK_FORMS),
        fill=st.sampled_from(MASK_FILLS),
        fully_masked=st.booleans(),
        dtype=st.sampled_from(tuple(dtypes)),
        batch=st.integers(1, 2),
        heads=st.integers(1, 2),
        n=st.integers(2, max_len),
        m=st.integers(2, max_len),
        head_dim=st.sampled_from(tuple(head_dims)),
        magnitude=st.sampled_from(tuple(magnitudes)),
    ).filter(ScoresGraph.fill_fits)
