"""bitlower's source hash is part of Inductor's cache keys (``bitlower.source_key``)."""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass

from bitlower.source_hash import SOURCE_HASH, _digest, source_files
from bitlower.source_key import SourceKey, with_source_key


def test_the_hash_covers_every_source_file_of_the_compiled_path(tmp_path):
    names = {f"{p.parent.name}/{p.name}" for p in source_files()}
    assert {"bitlower/ops.py", "codegen/forward.py", "hopper/kernel_sage.py", "passes/rewrite_attention.py"} <= names
    assert SourceKey().uuid() == SOURCE_HASH == _digest(source_files())
    changed = tmp_path / "ops.py"
    changed.write_bytes(source_files()[0].read_bytes() + b"#")
    assert _digest((changed,) + source_files()[1:]) != SOURCE_HASH


class _Theirs(CustomGraphPass):
    def __init__(self, uuid):
        self.calls, self._uuid = 0, uuid

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return self._uuid


def test_a_callers_pass_runs_and_joins_the_key_or_keeps_its_cache_bypass():
    theirs = _Theirs("v7")
    patched = with_source_key({"post_grad_custom_post_pass": theirs})["post_grad_custom_post_pass"]
    patched(torch.fx.Graph())
    assert theirs.calls == 1 and patched.uuid() == (SOURCE_HASH, "v7")
    assert with_source_key({"post_grad_custom_post_pass": _Theirs(None)})["post_grad_custom_post_pass"].uuid() is None


def test_warm_compiles_still_hit_the_fx_graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))

    def attend(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v) * 2

    with torch._inductor.config.patch(fx_graph_cache=True, fx_graph_remote_cache=False):
        torch._dynamo.reset()
        torch.compile(attend, backend="bitlower", fullgraph=True)(q, k, v)
        hits = counters["inductor"]["fxgraph_cache_hit"]
        torch._dynamo.reset()
        torch.compile(attend, backend="bitlower", fullgraph=True)(q, k, v)
    assert counters["inductor"]["fxgraph_cache_hit"] == hits + 1


def test_the_opaque_gluon_operators_take_the_source_hash_last():
    import bitlower.codegen.hopper.backward_op  # noqa: F401 - defines the operators
    import bitlower.codegen.hopper.op  # noqa: F401
    for name in ("hopper_fwd", "hopper_bwd", "binary_attention_fwd", "binary_attention_bwd"):
        schema = getattr(torch.ops.bitlower, name).default._schema
        assert schema.arguments[-1].name == "source" and str(schema.arguments[-1].type) == "str", name


def test_emitted_operator_calls_carry_the_hash():
    """The functional API's graph and the rewrite pass's output both call the operator with the hash last."""
    import bitlower
    from bitlower.backend_config import BackendConfig
    from bitlower.passes.rewrite_attention import rewrite_attention

    seen = []

    def record(gm, example_inputs):
        gm = rewrite_attention(gm, BackendConfig())
        seen.extend(n.args for n in gm.graph.nodes if "binary_attention_fwd" in str(n.target))
        return gm

    q = torch.randn(1, 2, 16, 8)
    torch._dynamo.reset()
    torch.compile(lambda q: bitlower.binary_attention(q, q, q), backend=record, fullgraph=True)(q)
    torch.compile(lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q), backend=record,
                  fullgraph=True)(q)
    assert len(seen) == 2 and all(args[-1] == SOURCE_HASH for args in seen)
