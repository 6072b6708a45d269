"""``bitlower.explain``: every site with its module path, status and reason."""
import torch
import torch.nn.functional as F

from bitlower.explain import explain
from bitlower.testing import AttentionVariant


class TwoBlocks(torch.nn.Module):
    """One attention the backend rewrites, one whose probabilities are returned (skipped)."""

    def __init__(self):
        super().__init__()
        self.first = AttentionVariant(product="sdpa").module()
        self.second = AttentionVariant().module()

    def forward(self, q, k, v):
        out = self.first(q, k, v)
        probs = (q @ k.transpose(-2, -1)).softmax(-1)
        return out + self.second(q, k, v), probs @ v, probs


def test_report_lists_every_site_with_path_status_and_reason():
    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))
    torch._dynamo.reset()
    report = explain(TwoBlocks().eval(), q, k, v)
    rows = [(s.module_path, s.pattern, s.status, s.reason) for s in report.sites]
    assert rows == [
        ("first", "sdpa", "rewritten", None),
        ("", "softmax_attention", "skipped", "probabilities_reused"),
        ("second", "softmax_attention", "rewritten", None),
    ]
    assert report.counts == {"found": 3, "rewritten": 2, "skipped": 1}
    assert report.skipped() == {"probabilities_reused": 1}
    assert report.sites[0].details["shape"] == (1, 2, 16, 16, 16, 16)
    text = str(report)
    assert "probabilities_reused" in text and "found 3, rewritten 2, skipped 1" in text


def test_options_are_applied_and_graph_breaks_are_reported():
    def broken(q, k, v):
        out = F.scaled_dot_product_attention(q, k, v)
        torch._dynamo.graph_break()
        return F.scaled_dot_product_attention(out, k, v)

    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))
    torch._dynamo.reset()
    report = explain(broken, q, k, v, options={"min_seq_len": 32})
    assert report.graphs == 2 and len(report.graph_breaks) == 1
    assert [s.reason for s in report.sites] == ["short_sequence", "short_sequence"]
