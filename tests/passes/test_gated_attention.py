"""ConViT's gated positional self-attention (GPSA) is rewritten exactly: only the Q·Kᵀ softmax is
binarized, the gate's blend with the positional softmax, its renormalisation and P·V stay (issue 21).

``GatedAttention`` re-creates timm's ConViT ``GPSA.forward`` / ``get_attention`` (timm cannot be
imported on the CPU machines).
"""
import pytest
import torch
from torch import nn

import bitlower
from bitlower.counters import counters, reset
from bitlower.explain import explain
from bitlower.backend import bitlower_eager_backend
from bitlower.backend_config import BackendConfig
from bitlower.passes.rewrite_attention import OPERATOR, SITES_META_KEY, rewrite_attention
from bitlower.testing import TOLERANCE, assert_close


def rel_indices(num_patches: int) -> torch.Tensor:
    """``(1, N, N, 3)``: (dx, dy, dx² + dy²) between patches of a square grid (timm's ``get_rel_indices``)."""
    side = int(num_patches ** 0.5)
    ind = torch.arange(side).view(1, -1) - torch.arange(side).view(-1, 1)
    indx = ind.repeat(side, side)
    indy = ind.repeat_interleave(side, dim=0).repeat_interleave(side, dim=1)
    out = torch.zeros(1, num_patches, num_patches, 3)
    out[..., 2], out[..., 1], out[..., 0] = indx ** 2 + indy ** 2, indy, indx
    return out


def rewritten(fn):
    """``fn`` compiled with the rewrite alone (the graph then runs eagerly); its graphs in ``.graphs``."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(rewrite_attention(gm, BackendConfig()))
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    compiled.graphs = graphs
    return compiled


class GatedAttention(nn.Module):
    """timm's GPSA: ``(1 - σ(g)) softmax(q kᵀ s) + σ(g) softmax(pos)``, renormalised, dropout, P·V.

    ``renormalise=False`` drops the division; ``return_attention`` also returns the probabilities.
    """

    def __init__(self, dim=32, num_heads=2, num_patches=16, renormalise=True, per_key_gate=False,
                 return_attention=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qk, self.v, self.proj = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.attn_drop = nn.Dropout(0.0)
        self.gating_param = nn.Parameter(torch.randn(num_patches if per_key_gate else num_heads))
        self.renormalise, self.per_key_gate, self.return_attention = renormalise, per_key_gate, return_attention
        self.register_buffer("rel_indices", rel_indices(num_patches), persistent=False)

    def heads(self, x):
        b, n, _ = x.shape
        qk = self.qk(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, N, D)
        q, k = qk.unbind(0)
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)  # (B, H, N, D)
        pos_score = self.pos_proj(self.rel_indices).expand(b, -1, -1, -1).permute(0, 3, 1, 2)  # (B, H, N, N)
        return q, k, v, pos_score.softmax(dim=-1)

    def gate(self):
        shape = (1, 1, 1, -1) if self.per_key_gate else (1, -1, 1, 1)
        return self.gating_param.view(*shape)

    def blend(self, patch_score, pos_score, v):
        gating = self.gate()
        attn = (1.0 - torch.sigmoid(gating)) * patch_score + torch.sigmoid(gating) * pos_score
        if self.renormalise:
            attn /= attn.sum(dim=-1).unsqueeze(-1)
        attn = self.attn_drop(attn)
        return attn, attn @ v

    def forward(self, x):
        b, n, c = x.shape
        q, k, v, pos_score = self.heads(x)
        patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn, out = self.blend(patch_score, pos_score, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))  # (B, N, C)
        return (out, attn) if self.return_attention else out


def expected(module: GatedAttention, x: torch.Tensor) -> torch.Tensor:
    """The module with its Q·Kᵀ softmax replaced by the binary one of bitlower's reference.

    The binary probabilities are read off the operator by multiplying them with the identity
    (P @ I = P); the blend, renormalisation and P·V then run as the module writes them.
    """
    b, n, c = x.shape
    q, k, v, pos_score = module.heads(x)
    eye = torch.eye(n, dtype=x.dtype).expand(b, module.num_heads, n, n)  # (B, H, M, M)
    patch_score = bitlower.binary_attention(q, k, eye, scale=module.scale)  # (B, H, N, M)
    _, out = module.blend(patch_score, pos_score, v)
    return module.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("renormalise, backend", [(True, "bitlower"), (False, "eager")],
                         ids=["renormalised", "plain_blend"])
def test_gated_attention_is_rewritten_exactly_with_gradients(renormalise, backend):
    """Output and ste gradients (input and parameters) equal the binary reference of the formula.

    The renormalised case compiles with ``backend="bitlower"`` (Inductor); the other with the same
    rewrite and AOTAutograd without Inductor (seconds faster on CPU).
    """
    torch.manual_seed(0)
    module = GatedAttention(renormalise=renormalise).train()  # dropout p=0: the site stays exact
    x = torch.randn(2, 16, 32, requires_grad=True)
    torch._dynamo.reset()
    reset()
    compiled = torch.compile(module, fullgraph=True,
                             backend="bitlower" if backend == "bitlower" else bitlower_eager_backend)
    got, want = compiled(x), expected(module, x)
    assert counters["sites_rewritten"].total() == 1 and counters["sites_skipped"].total() == 0
    tol = TOLERANCE[torch.float32]
    assert_close("output", got, want, tol)
    leaves = {"x": x, "qk.weight": module.qk.weight, "v.weight": module.v.weight,
              "gating_param": module.gating_param, "pos_proj.weight": module.pos_proj.weight}
    cotangent = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    got_grads = torch.autograd.grad(got, list(leaves.values()), cotangent)
    want_grads = torch.autograd.grad(want, list(leaves.values()), cotangent)
    for name, g, w in zip(leaves, got_grads, want_grads):
        assert_close(f"grad of {name}", g, w, tol)


def test_the_rewritten_graph_holds_the_operator_and_keeps_the_blend():
    torch.manual_seed(0)
    module = GatedAttention().eval()
    x = torch.randn(2, 16, 32)
    compiled = rewritten(module)
    with torch.no_grad():
        assert_close("output", compiled(x), expected(module, x), TOLERANCE[torch.float32])
    gm, = compiled.graphs
    assert [(r.status, r.reason) for r in gm.meta[SITES_META_KEY]] == [("rewritten", None)]
    assert len([n for n in gm.graph.nodes if n.target is OPERATOR]) == 1
    softmaxes = [n for n in gm.graph.nodes if n.target == "softmax"]
    assert len(softmaxes) == 1  # the positional softmax stays; the Q·Kᵀ one is gone


class QueryPositions(GatedAttention):
    """The other matrix reads q: its softmax would have to see the binarized scores' inputs."""

    def heads(self, x):
        q, k, v, pos_score = super().heads(x)
        return q, k, v, (pos_score + q.mean(-1, keepdim=True)).softmax(dim=-1)


@pytest.mark.parametrize("kind, reason", [
    ("per_key_gate", "blend_weight_per_key"),
    ("return_attention", "probabilities_reused"),  # the blended probabilities are also returned
    ("other_reads_q", "blend_other_reads_qk"),
])
def test_a_blend_that_is_not_exact_stays_skipped_with_its_reason(kind, reason):
    torch.manual_seed(0)
    torch._dynamo.reset()
    reset()
    module = (QueryPositions() if kind == "other_reads_q" else GatedAttention(**{kind: True})).eval()
    report = explain(module, torch.randn(2, 16, 32))
    assert [(s.status, s.reason) for s in report.sites] == [("skipped", reason)]
    assert report.unmatched == [] and counters["sites_skipped"][reason] == 1
