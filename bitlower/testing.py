"""Property tests for the bitlower backend: attention variants and the equivalence check.

bitlower's own tests use these, and so can anyone who wants to know whether the backend
rewrites *their* attention code. Two pieces:

* ``attention_variants()``: a hypothesis strategy of ``AttentionVariant`` — one attention
  written in one of the spellings real models use (scale on the scores, on q or on both,
  as ``*`` or ``/``; ``transpose`` or ``permute``; ``@``, ``torch.matmul``, ``bmm`` and
  ``baddbmm`` on ``(B*H, N, D)``, ``einsum``, SDPA; softmax as method, ``torch.softmax``,
  ``F.softmax`` with or without ``dtype=``, ``nn.Softmax``; additive or boolean masks;
  dropout; dtypes, head dims, ``N != M``). ``variant.module()`` builds it as a module,
  ``variant.inputs(seed)`` its inputs, ``variant.reference`` the binary attention it must
  become.
* ``check_rewrite(fn, inputs, reference)``: compiles ``fn`` with ``backend="bitlower"`` and
  ``fullgraph=True``, asserts the expected number of sites were rewritten and that outputs
  (and gradients) equal ``reference`` within the tolerance of the dtype.
* ``scores_graphs()`` / ``check_rewrite_or_left_alone(graph)`` (``bitlower.testing_scores``): the
  rewrite's safety as a property over softmax axes and spellings, factors of every broadcast
  shape on q, k or the scores, finite and infinite mask fills and fully masked rows: each graph
  is rewritten to the binary reference or left alone equal to eager, never anything else.

Example (a property test of your own attention module)::

    import torch
    from hypothesis import given, settings, strategies as st
    import bitlower
    from bitlower.testing import check_rewrite

    @settings(max_examples=10, deadline=None)
    @given(seed=st.integers(0, 2**16))
    def test_my_attention(seed):
        torch.manual_seed(seed)
        attn = MyAttention(dim=64, heads=4).eval()
        x = torch.randn(2, 17, 64)
        q, k, v = attn.project(x)                       # your (B, H, N, D) tensors
        check_rewrite(attn.attend, (q, k, v),
                      lambda q, k, v: bitlower.binary_attention(q, k, v, scale=attn.scale))
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import bitlower
from bitlower.counters import counters
from bitlower.testing_scores import (  # noqa: F401  (public: the side-condition property kit)
    ScoresGraph,
    check_compiled_or_left_alone,
    check_rewrite_or_left_alone,
    scores_graphs,
)

# Both the compiled and the reference path compute in float32 (float64 for float64) from
# the same sign bits; they differ only in reduction order (mean|q|, log-sum-exp, P·V), a few
# float32 ulps, and in the final rounding to the input dtype: two ulps of that dtype.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 2e-5,  # ~170 float32 ulps at 1.0: sums over M <= 256 keys in another order
    torch.float16: 2 ** -9,  # two float16 ulps at 1.0
    torch.bfloat16: 2 ** -6,  # two bfloat16 ulps at 1.0
}

PRODUCTS = ("operator", "torch.matmul", "method", "einsum", "bmm", "baddbmm", "einsum_flat", "sdpa")
FLAT_PRODUCTS = ("bmm", "baddbmm", "einsum_flat")  # (B*H, N, D) layouts
SCALE_PLACES = ("scores", "q", "q_and_k")
SCALE_OPS = ("mul", "div")
TRANSPOSES = ("transpose(-2, -1)", "transpose(-1, -2)", "transpose(2, 3)", "permute")
SOFTMAXES = ("method", "torch.softmax", "F.softmax", "F.softmax(dtype=float32)", "nn.Softmax")
MASKS = ("none", "additive", "bool")


@dataclass(frozen=True)
class AttentionVariant:
    """One way of writing ``softmax(q kᵀ * D**-0.5 + mask) v``; see the module docstring.

    Attributes:
        product, scale_at, scale_op, transpose, softmax, mask: choices from ``PRODUCTS``,
            ``SCALE_PLACES``, ``SCALE_OPS``, ``TRANSPOSES``, ``SOFTMAXES``, ``MASKS``.
        dropout: an ``nn.Dropout(0.1)`` on the probabilities (active only in train mode).
        dtype: dtype of q, k, v (and of an additive mask).
        batch, heads, n, m, head_dim, value_dim: shapes of q ``(B, H, N, D)``, k ``(B, H, M, D)``,
            v ``(B, H, M, Dv)``.
    """

    product: str = "operator"
    scale_at: str = "scores"
    scale_op: str = "mul"
    transpose: str = "transpose(-2, -1)"
    softmax: str = "method"
    mask: str = "none"
    dropout: bool = False
    dtype: torch.dtype = torch.float32
    batch: int = 2
    heads: int = 2
    n: int = 16
    m: int = 16
    head_dim: int = 16
    value_dim: int = 16

    @property
    def scale(self) -> float:
        """The softmax scale every spelling applies: ``D ** -0.5``."""
        return self.head_dim ** -0.5

    def module(self) -> nn.Module:
        """The attention as a module: ``forward(q, k, v, mask=None) -> (B, H, N, Dv)``."""
        return VariantAttention(self)

    def inputs(self, seed: int = 0) -> tuple:
        """``(q, k, v, mask)`` with gradients enabled on q, k, v; ``mask`` None for ``"none"``."""
        gen = torch.Generator().manual_seed(seed)
        shapes = ((self.batch, self.heads, self.n, self.head_dim), (self.batch, self.heads, self.m, self.head_dim),
                  (self.batch, self.heads, self.m, self.value_dim))
        q, k, v = (torch.randn(s, generator=gen).to(self.dtype).requires_grad_() for s in shapes)
        mask = None
        if self.mask == "additive":
            mask = (0.5 * torch.randn(self.batch, 1, self.n, self.m, generator=gen)).to(self.dtype)
        elif self.mask == "bool":
            mask = torch.rand(self.batch, 1, 1, self.m, generator=gen) > 0.3
            mask[..., 0] = True  # every query keeps at least one key
        return q, k, v, mask

    def reference(self, q, k, v, mask=None) -> torch.Tensor:
        """The binary attention this variant must compile to (``weighting="mean_abs"``)."""
        return bitlower.binary_attention(q, k, v, scale=self.scale, bias=mask)


class VariantAttention(nn.Module):
    """The module ``AttentionVariant.module()`` returns."""

    def __init__(self, variant: AttentionVariant):
        super().__init__()
        self.variant = variant
        self.dropout = nn.Dropout(0.1 if variant.dropout else 0.0)
        self.softmax_module = nn.Softmax(dim=-1)

    def _scale(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        return x * factor if self.variant.scale_op == "mul" else x / (1.0 / factor)

    def _transpose_k(self, k: torch.Tensor) -> torch.Tensor:
        spelling = self.variant.transpose
        if k.dim() == 3 or spelling == "transpose(-2, -1)":
            return k.transpose(-2, -1)
        if spelling == "transpose(-1, -2)":
            return k.transpose(-1, -2)
        if spelling == "transpose(2, 3)":
            return k.transpose(2, 3)
        return k.permute(0, 1, 3, 2)

    def _softmax(self, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        spelling = self.variant.softmax
        if spelling == "method":
            return s.softmax(dim=-1)
        if spelling == "torch.softmax":
            return torch.softmax(s, -1)
        if spelling == "F.softmax":
            return F.softmax(s, dim=-1)
        if spelling == "nn.Softmax":
            return self.softmax_module(s)
        return F.softmax(s, dim=-1, dtype=torch.float32).to(dtype)

    def _scores(self, q, k, scale_scores: bool):
        product, var = self.variant.product, self.variant
        if product == "baddbmm":
            empty = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device)
            return torch.baddbmm(empty, q, k.transpose(-1, -2), beta=0, alpha=var.scale if scale_scores else 1.0)
        if product == "einsum":
            s = torch.einsum("bhnd,bhmd->bhnm", q, k)
        elif product == "einsum_flat":
            s = torch.einsum("b i d, b j d -> b i j", q, k)
        elif product == "bmm":
            s = torch.bmm(q, k.transpose(1, 2))
        elif product == "torch.matmul":
            s = torch.matmul(q, self._transpose_k(k))
        elif product == "method":
            s = q.matmul(self._transpose_k(k))
        else:
            s = q @ self._transpose_k(k)
        if scale_scores:
            s = s * var.scale if var.scale_op == "mul" else s / math.sqrt(var.head_dim)
        return s

    def forward(self, q, k, v, mask=None):
        var = self.variant
        bsz, heads, n, _ = q.shape
        if var.product == "sdpa":
            dropout_p = self.dropout.p if self.training else 0.0  # the same probability as the unfused forms
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=var.scale)
        if var.scale_at == "q":
            q = self._scale(q, var.scale)
        elif var.scale_at == "q_and_k":
            q, k = self._scale(q, var.scale ** 0.5), self._scale(k, var.scale ** 0.5)
        flat = var.product in FLAT_PRODUCTS
        if flat:
            q, k, v = (x.reshape(bsz * heads, x.shape[2], x.shape[3]) for x in (q, k, v))  # (BH, L, D)
            if mask is not None:
                mask = mask.expand(bsz, heads, mask.shape[2], mask.shape[3]).reshape(bsz * heads, mask.shape[2], -1)
        s = self._scores(q, k, scale_scores=var.scale_at == "scores")
        if var.mask == "additive":
            s = s + mask
        elif var.mask == "bool":
            s = s.masked_fill(~mask, float("-inf"))
        p = self.dropout(self._softmax(s, v.dtype))
        if var.product == "einsum":
            out = torch.einsum("bhnm,bhmd->bhnd", p, v)
        elif var.product == "einsum_flat":
            out = torch.einsum("bij,bjd->bid", p, v)
        elif flat:
            out = torch.bmm(p, v)
        else:
            out = p @ v
        return out.reshape(bsz, heads, n, -1)  # (B, H, N, Dv)


def attention_variants(
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    products: Sequence[str] = PRODUCTS,
    masks: Sequence[str] = MASKS,
    head_dims: Sequence[int] = (8, 16, 24, 40, 72),
    max_len: int = 24,
    dropout: bool = True,
):
    """A hypothesis strategy of ``AttentionVariant`` (needs the ``hypothesis`` package).

    Args:
        dtypes, products, masks, head_dims: the choices to draw from.
        max_len: the largest N and M (small keeps each compile fast).
        dropout: whether variants may carry an ``nn.Dropout(0.1)`` on the probabilities.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=2, deadline=None)
        ... @given(attention_variants(products=("sdpa",)))
        ... def test(variant):
        ...     q, k, v, mask = variant.inputs()
        ...     check_rewrite(variant.module().eval(), (q, k, v, mask), variant.reference)
        >>> test()
    """
    from hypothesis import strategies as st

    return st.builds(
        AttentionVariant,
        product=st.sampled_from(tuple(products)),
        scale_at=st.sampled_from(SCALE_PLACES),
        scale_op=st.sampled_from(SCALE_OPS),
        transpose=st.sampled_from(TRANSPOSES),
        softmax=st.sampled_from(SOFTMAXES),
        mask=st.sampled_from(tuple(masks)),
        dropout=st.booleans() if dropout else st.just(False),
        dtype=st.sampled_from(tuple(dtypes)),
        batch=st.integers(1, 2),
        heads=st.integers(1, 3),
        n=st.integers(1, max_len),
        m=st.integers(1, max_len),
        head_dim=st.sampled_from(tuple(head_dims)),
        value_dim=st.sampled_from((8, 16, 24)),
    )


def _rewritten_count() -> int:
    return sum(counters["sites_rewritten"].values())


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """``max|got - want| <= tol * (1 + max|want|)``, both finite; AssertionError otherwise."""
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{name}: got {tuple(got.shape)} {got.dtype}, want {tuple(want.shape)} {want.dtype}"
    assert torch.isfinite(want).all() and torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got.double() - want.double()).abs().max().item()
    bound = tol * (1.0 + want.double().abs().max().item())
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (tolerance {tol:g} for {want.dtype})"


def check_rewrite(
    fn: Callable,
    inputs: Sequence,
    reference: Callable,
    *,
    sites: int = 1,
    options: dict | None = None,
    grad: bool = True,
    inductor: bool = True,
) -> torch.Tensor:
    """Compile ``fn`` with the bitlower backend and check it against ``reference``.

    Resets Dynamo first (``torch._dynamo.reset()``) so ``fn`` compiles afresh.

    Args:
        fn: the attention code (a module or function) taking ``inputs``; returns one tensor.
        inputs: its arguments; tensors with ``requires_grad`` get their gradients checked.
        reference: the expected computation on the same inputs, usually a
            ``bitlower.binary_attention`` call.
        sites: how many attention sites must be rewritten.
        options: ``torch.compile`` options for the backend (``BackendConfig`` fields).
        grad: also compare the gradients of the inputs that require them.
        inductor: compile with ``backend="bitlower"``; False uses
            ``bitlower.backend.bitlower_eager_backend`` (same rewrite, AOTAutograd without
            Inductor: seconds faster per compile on CPU).

    Returns:
        the compiled output.

    Raises:
        AssertionError: a different number of rewrites, or outputs / gradients outside
            ``TOLERANCE`` of their dtype.
    """
    torch._dynamo.reset()
    before = _rewritten_count()
    if inductor:
        compiled = torch.compile(fn, backend="bitlower", fullgraph=True, options=options)
    else:
        from bitlower.backend import bitlower_eager_backend

        backend = functools.partial(bitlower_eager_backend, options=options)
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
    got = compiled(*inputs)
    rewritten = _rewritten_count() - before
    assert rewritten == sites, (f"expected {sites} rewritten attention site(s), got {rewritten}; "
                                f"skipped so far: {dict(counters['sites_skipped'])}")
    want = reference(*inputs)
    tol = TOLERANCE[want.dtype]
    assert_close("output", got, want, tol)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if grad and leaves and want.requires_grad:
        cotangent = torch.randn(want.shape, generator=torch.Generator().manual_seed(0)).to(want.dtype)
        got_grads = torch.autograd.grad(got, leaves, cotangent, allow_unused=True)
        want_grads = torch.autograd.grad(want, leaves, cotangent, allow_unused=True)
        for i, (g, w) in enumerate(zip(got_grads, want_grads)):
            assert (g is None) == (w is None), f"grad of input {i}: one path has none"
            if w is not None:
                assert_close(f"grad of input {i}", g, w, tol)
    return got


def capture_graph(fn: Callable, *inputs) -> torch.fx.GraphModule:
    """The single Dynamo graph of ``fn(*inputs)`` (``fullgraph=True``), captured without compiling it."""
    torch._dynamo.reset()
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=keep, fullgraph=True)(*inputs)
    assert len(graphs) == 1, f"expected one graph, Dynamo captured {len(graphs)}"
    return graphs[0]


def run_graph(gm: torch.fx.GraphModule, **named) -> torch.Tensor:
    """Call a captured graph with arguments by name (its placeholders ``L_q_`` follow first use)."""
    args = [named[n.target[2:-1]] for n in gm.graph.nodes if n.op == "placeholder"]  # "L_q_" -> "q"
    return gm(*args)[0]
