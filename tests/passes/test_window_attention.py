"""Swin's shifted-window attention: the window mask added on a view round trip of the scores is
carried into the operator as a dense bias (issue 21).

``WindowAttention`` and ``shifted_window_mask`` re-create, in a few lines, the shape logic of timm's
``SwinTransformer`` (``WindowAttention.forward`` unfused, and the block's ``attn_mask``); timm cannot
be imported on the CPU machines (no CPU torchvision).
"""
import pytest
import torch
from torch import nn

import bitlower
from bitlower.backend_config import BackendConfig
from bitlower.passes.rewrite_attention import OPERATOR, SITES_META_KEY, rewrite_attention
from bitlower.testing import TOLERANCE, assert_close, capture_graph, run_graph


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


def relative_position_index(win_h: int, win_w: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(win_h), torch.arange(win_w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    rel[:, :, 0] += win_h - 1
    rel[:, :, 1] += win_w - 1
    rel[:, :, 0] *= 2 * win_w - 1
    return rel.sum(-1)  # (N, N)


class WindowAttention(nn.Module):
    """timm's Swin ``WindowAttention`` (unfused path): relative-position bias, then the window mask."""

    def __init__(self, dim=32, num_heads=2, window=(4, 4)):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.window_area = window[0] * window[1]
        self.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn((2 * window[0] - 1) * (2 * window[1] - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(*window), persistent=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)

    def rel_pos_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1).contiguous()  # (H, N, N)
        return bias.unsqueeze(0)  # (1, H, N, N)

    def qkv_heads(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B_, H, N, D)
        return qkv.unbind(0)

    def forward(self, x, mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv_heads(x)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn + self.rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)  # (B, W, H, N, N)
            attn = attn.view(-1, self.num_heads, n, n)  # (B_, H, N, N)
        attn = self.softmax(attn)
        x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


def shifted_window_mask(size=8, window=4, shift=2) -> torch.Tensor:
    """The block's ``attn_mask`` ``(W, N, N)``: 0 within a region, -100 across regions."""
    img = torch.zeros(1, size, size, 1)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = img.view(1, size // window, window, size // window, window, 1).permute(0, 1, 3, 2, 4, 5)
    win = win.reshape(-1, window * window)  # (W, N)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _expected(attn, x, mask):
    """The module with its attention replaced by binary attention and the combined dense bias."""
    b, n, _ = x.shape
    q, k, v = attn.qkv_heads(x)
    bias = attn.rel_pos_bias().expand(b, -1, -1, -1)
    if mask is not None:
        w = mask.shape[0]
        bias = bias + mask.view(1, w, 1, n, n).expand(b // w, w, attn.num_heads, n, n).reshape(b, attn.num_heads, n, n)
    out = bitlower.binary_attention(q, k, v, scale=attn.scale, bias=bias)
    return attn.proj(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("shifted", [False, True], ids=["window", "shifted_window"])
def test_shifted_window_attention_is_rewritten_with_the_window_mask(shifted):
    torch.manual_seed(0)
    attn = WindowAttention().eval()
    mask = shifted_window_mask() if shifted else None
    x = torch.randn(2 * 4, 16, 32)  # (B * windows, N, C)
    compiled = rewritten(attn)
    with torch.no_grad():
        got = compiled(x, mask)
        assert_close("output", got, _expected(attn, x, mask), TOLERANCE[torch.float32])
    gm, = compiled.graphs
    assert [(r.status, r.reason) for r in gm.meta[SITES_META_KEY]] == [("rewritten", None)]
    assert len([n for n in gm.graph.nodes if n.target is OPERATOR]) == 1


def test_a_round_trip_that_does_not_return_to_the_scores_shape_is_not_attention_over_keys():
    """``view`` to another shape before the softmax: the softmax's last axis is not the keys'."""
    q, k, v = (torch.randn(2, 2, 8, 16) for _ in range(3))
    fn = lambda q, k, v: ((q @ k.mT).view(2, 2, 4, 16).softmax(-1).view(2, 2, 8, 8)) @ v  # noqa: E731
    gm = rewrite_attention(capture_graph(fn, q, k, v), BackendConfig())
    assert not [n for n in gm.graph.nodes if n.target is OPERATOR]
    assert_close("left alone", run_graph(gm, q=q, k=k, v=v), fn(q, k, v), TOLERANCE[torch.float32])
