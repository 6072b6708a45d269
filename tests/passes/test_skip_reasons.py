"""Skip reasons are one enum (``bitlower.passes.reasons.SkipReason``), listed in ``passes/README.md``;
the counters and reports users read keep plain strings (issue 13 item 5)."""
import ast
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

from bitlower.backend_config import BackendConfig
from bitlower.counters import counters, reset
from bitlower.passes.reasons import SkipReason
from bitlower.passes.rewrite_attention import SITES_META_KEY, rewrite_attention
from bitlower.passes.site import AttentionSite

PASSES = pathlib.Path(__file__).resolve().parents[2] / "passes"


def _skip_section() -> str:
    text = (PASSES / "README.md").read_text()
    return text.split("## Skip reasons\n", 1)[1].split("\n## ", 1)[0].split("Inductor caches:", 1)[0]


def test_readme_lists_every_member_and_nothing_else():
    names = set(re.findall(r"`([a-z]+(?:_[a-z]+)*)`", _skip_section()))
    members = {r.value for r in SkipReason}
    assert members - names == set(), f"SkipReason members missing from passes/README.md: {sorted(members - names)}"
    assert names - members == set(), f"passes/README.md lists reasons SkipReason lacks: {sorted(names - members)}"


def test_no_reason_string_outside_the_enum():
    """Every reason string in the passes' source is spelled through the enum, not as a literal."""
    values = {r.value for r in SkipReason}
    found = []
    for path in PASSES.glob("*.py"):
        if path.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in values:
                found.append((path.name, node.lineno, node.value))
    assert found == []


def test_skip_takes_only_members():
    site = AttentionSite("sdpa", "", "", anchor=None)
    with pytest.raises(TypeError, match="SkipReason"):
        site.skip("scores_reused")
    site.skip(SkipReason.SCORES_REUSED)
    assert site.reason is SkipReason.SCORES_REUSED


def _capture(fn, *inputs):
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=keep, fullgraph=True)(*inputs)
    return graphs[0]


def test_counters_and_reports_carry_plain_strings():
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    reset()
    gm = rewrite_attention(_capture(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v),
                           BackendConfig(min_seq_len=64))
    (key,) = counters["sites_skipped"]
    assert type(key) is str and key == "short_sequence"
    (report,) = gm.meta[SITES_META_KEY]
    assert type(report.reason) is str and report.reason == "short_sequence"
