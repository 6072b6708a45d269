"""The decomposed binary-attention formula (sign, matmul, scale, weights, bias, softmax,
matmul) in float64 with plain autograd: the oracle the operator is tested against.

Each gradient mode is written as the autograd graph it defines (SPEC §4):
``ste`` a clipped straight-through sign, ``stopgrad`` detached q and k, ``hamming`` detached
signs with differentiable scalars.
"""
import pytest
import torch

from bitlower.packing import sgn
from bitlower.reference import quantize_probs, quantize_values
from bitlower.relpos import gather_table_bias


class ClippedSteSign(torch.autograd.Function):
    """``sgn(x)`` forward; ``grad * 1[|x| <= clip]`` backward."""

    @staticmethod
    def forward(ctx, x, clip):
        ctx.save_for_backward(x)
        ctx.clip = clip
        return sgn(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.clip).to(grad.dtype), None


def _signs(x, grad_mode, clip):
    if grad_mode == "ste":
        return ClippedSteSign.apply(x, clip)
    return sgn(x).detach()


def _mean_abs(x, grad_mode):
    src = x.detach() if grad_mode == "stopgrad" else x
    return (src * sgn(x).detach()).mean(dim=(2, 3))[..., None]  # (B, H, 1); d|x|/dx = sgn(x)


def _bias(bias, kind, grid):
    if kind == "none":
        return 0.0
    if kind == "head":
        return bias.view(1, -1, 1, 1)
    if kind == "table":
        return gather_table_bias(bias, grid)
    if kind == "mask":
        return torch.zeros((), dtype=torch.float64).masked_fill(~bias, float("-inf"))
    return bias


def _straight_through(x, quantized):
    return x + (quantized - x).detach()


def decomposed(q, k, v, *, a=None, b=None, bias=None, bias_kind="none", grid=(), scale=None,
               weighting="mean_abs", grad_mode="ste", pv_quant="none", ste_clip=1.0):
    """Float64 decomposed formula. For ``bilinear``, q/k are ±1 planes ``(B, H, L, 2, D)`` and
    a/b their weights ``(B, H, L, 2)``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if weighting == "bilinear":
        qstar = (a.unsqueeze(-1) * q).sum(-2)  # (B, H, N, D)
        kstar = (b.unsqueeze(-1) * k).sum(-2)  # (B, H, M, D)
        dots = qstar @ kstar.transpose(-1, -2)
    else:
        qs, ks = _signs(q, grad_mode, ste_clip), _signs(k, grad_mode, ste_clip)
        dots = qs @ ks.transpose(-1, -2)  # (B, H, N, M)
        if weighting == "mean_abs":
            a, b = _mean_abs(q, grad_mode), _mean_abs(k, grad_mode)
        if weighting in ("mean_abs", "token"):
            dots = dots * a.unsqueeze(-1) * b.unsqueeze(-2)
    s = scale * dots + _bias(bias, bias_kind, grid)
    p = torch.softmax(s, dim=-1)
    if pv_quant == "int8":
        window = v.abs() <= 2.0
        v_window = torch.where(window, v, v.detach())
        return _straight_through(p, quantize_probs(p).detach()) @ _straight_through(
            v_window, quantize_values(v).detach())
    return p @ v


@pytest.fixture
def decomposed_attention():
    return decomposed


GRID = (3, 2, 1)  # Gh, Gw, prefix tokens -> N = 7


def make_case(weighting="mean_abs", bias_kind="none", *, n=7, m=7, d=40, dv=24, bsz=2, heads=3,
              dtype=torch.float64, seed=0, requires_grad=False):
    """Random inputs for one variant: a dict of keyword arguments shared by the operator
    (``bitlower.binary_attention`` or the raw op) and :func:`decomposed`."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)

    if bias_kind == "table":
        n = m = GRID[2] + GRID[0] * GRID[1]
    planes = (2,) if weighting == "bilinear" else ()
    case = dict(
        q=rand(bsz, heads, n, *planes, d),
        k=rand(bsz, heads, m, *planes, d),
        v=rand(bsz, heads, m, dv),
        weighting=weighting,
        bias_kind=bias_kind,
    )
    if weighting == "bilinear":
        case["q"], case["k"] = sgn(case["q"]), sgn(case["k"])
        case["a"] = torch.rand(bsz, heads, n, 2, generator=gen, dtype=torch.float64).to(dtype)
        case["b"] = torch.rand(bsz, heads, m, 2, generator=gen, dtype=torch.float64).to(dtype)
    if weighting == "token":
        case["a"] = rand(bsz, heads, n, std=0.5).abs().add(0.5)
        case["b"] = rand(bsz, heads, m, std=0.5).abs().add(0.5)
    if bias_kind == "head":
        case["bias"] = rand(heads)
    if bias_kind == "table":
        rows = (2 * GRID[0] - 1) * (2 * GRID[1] - 1) + 3
        case["bias"], case["grid"] = rand(rows, heads), GRID
    if bias_kind == "dense":
        case["bias"] = rand(1, heads, n, m)
    if bias_kind == "mask":
        mask = torch.rand(bsz, 1, n, m, generator=gen) > 0.3
        mask[..., 0] = True  # every row keeps one key
        case["bias"] = mask
    if requires_grad:
        for name in ("q", "k", "v", "a", "b", "bias"):
            if name in case and case[name].is_floating_point() and not (name in "qk" and weighting == "bilinear"):
                case[name].requires_grad_(True)
    return case


def call_op(case, **static):
    """Run the raw forward op on a case (planes and all), returning the output only."""
    from bitlower import autograd  # noqa: F401  (registers the backward)

    d = case["q"].shape[-1]
    args = dict(scale=d ** -0.5, grad_mode="ste", pv_quant="none", ste_clip=1.0)
    args.update(static)
    return torch.ops.bitlower.binary_attention_fwd(
        case["q"], case["k"], case["v"], case.get("a"), case.get("b"), case.get("bias"), args["scale"],
        case["weighting"], case["bias_kind"], list(case.get("grid", ())), args["grad_mode"], args["pv_quant"],
        args["ste_clip"])[0]


@pytest.fixture
def case_factory():
    return make_case


@pytest.fixture
def op_runner():
    return call_op
