"""ConViT's gated attention is rewritten (its blend kept around the operator); softmaxes over a product that no site claims are
counted in ``sites_unmatched`` and shown by ``explain`` (issue 21).

``GPSA`` re-creates timm's ConViT ``GPSA`` (gated positional self-attention) shape for shape; timm
cannot be imported on the CPU machines.
"""
import torch
from torch import nn

from bitlower.counters import counters, reset
from bitlower.explain import explain


def rel_indices(num_patches: int) -> torch.Tensor:
    """``(1, N, N, 3)``: (dx, dy, dx² + dy²) between patches of a square grid (timm's ``get_rel_indices``)."""
    side = int(num_patches ** 0.5)
    ind = torch.arange(side).view(1, -1) - torch.arange(side).view(-1, 1)
    indx = ind.repeat(side, side)
    indy = ind.repeat_interleave(side, dim=0).repeat_interleave(side, dim=1)
    out = torch.zeros(1, num_patches, num_patches, 3)
    out[..., 2], out[..., 1], out[..., 0] = indx ** 2 + indy ** 2, indy, indx
    return out


class GPSA(nn.Module):
    """``(1 - sigmoid(g)) * softmax(q kᵀ * scale) + sigmoid(g) * softmax(pos)``, renormalised, then P·V."""

    def __init__(self, dim=32, num_heads=2, num_patches=16):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qk, self.v, self.proj = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.register_buffer("rel_indices", rel_indices(num_patches), persistent=False)

    def get_attention(self, x):
        b, n, c = x.shape
        qk = self.qk(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, N, D)
        q, k = qk.unbind(0)
        pos_score = self.pos_proj(self.rel_indices).expand(b, -1, -1, -1).permute(0, 3, 1, 2)  # (B, H, N, N)
        patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        pos_score = pos_score.softmax(dim=-1)
        gating = self.gating_param.view(1, -1, 1, 1)
        attn = (1.0 - torch.sigmoid(gating)) * patch_score + torch.sigmoid(gating) * pos_score
        attn /= attn.sum(dim=-1).unsqueeze(-1)
        return attn

    def forward(self, x):
        b, n, c = x.shape
        attn = self.get_attention(x)
        v = self.v(x).reshape(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)  # (B, H, N, D)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_gated_positional_attention_is_rewritten_not_left_out():
    """Exactness of the rewrite: ``test_gated_attention.py``."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    reset()
    report = explain(GPSA().eval(), torch.randn(2, 16, 32))
    assert [(s.status, s.reason) for s in report.sites] == [("rewritten", None)]
    assert report.unmatched == [] and counters["sites_rewritten"]["softmax_attention"] == 1
    assert counters["sites_skipped"].total() == 0


def test_softmax_over_a_product_no_site_claims_is_counted_and_explained():
    """A step the matcher does not know (``tanh`` soft-capping) between the product and the softmax."""
    torch._dynamo.reset()
    reset()
    fn = lambda q, k, v: (torch.tanh(q @ k.transpose(-2, -1) / 30.0) * 30.0).softmax(-1) @ v  # noqa: E731
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    report = explain(fn, q, k, v)
    assert report.sites == [] and [u.status for u in report.unmatched] == ["unmatched"]
    assert report.counts["unmatched"] == 1 and counters["sites_unmatched"].total() == 1
    assert "unmatched 1" in str(report) and "no matcher recognised" in str(report)


class WeightSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return (self.a @ self.b).softmax(-1).sum() * x + (x @ x.mT).softmax(-1).sum()


def test_softmax_over_weights_alone_is_not_reported_but_over_activations_is():
    """``a @ b`` of two parameters is no attention; ``x @ xᵀ`` of activations is reported."""
    torch._dynamo.reset()
    report = explain(WeightSoftmax(), torch.randn(8, 8))
    assert report.sites == [] and len(report.unmatched) == 1
