"""bitlower's source hash in every emitted operator call (``bitlower.source_hash``): warm compile caches
hit within a version and miss across versions."""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters

import bitlower
from bitlower import spec as spec_module
from bitlower.backend_config import BackendConfig
from bitlower.passes.rewrite_attention import rewrite_attention
from bitlower.source_hash import SOURCE_HASH, _digest, source_files


def test_the_hash_covers_every_source_file_of_the_compiled_path(tmp_path):
    names = {f"{p.parent.name}/{p.name}" for p in source_files()}
    assert {"bitlower/ops.py", "codegen/forward.py", "hopper/kernel_sage.py", "passes/rewrite_attention.py"} <= names
    assert SOURCE_HASH == _digest(source_files())
    changed = tmp_path / "ops.py"
    changed.write_bytes(source_files()[0].read_bytes() + b"#")
    assert _digest((changed,) + source_files()[1:]) != SOURCE_HASH


def test_emitted_operator_calls_carry_the_hash():
    """The functional API's graph and the rewrite pass's output both call the operator with the hash last."""
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


def _cache_hits() -> int:
    """AOTAutograd cache hits: that cache keys the graph before the operator's body is traced, so only the
    ``source`` argument tells versions apart there (the FX graph cache keys the traced body itself)."""
    return counters["aot_autograd"]["autograd_cache_hit"]


def test_warm_caches_hit_within_a_version_and_miss_across_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    q = torch.randn(1, 2, 8, 16)

    def compile_once():
        torch._dynamo.reset()
        return torch.compile(lambda q: bitlower.binary_attention(q, q, q) * 2, fullgraph=True)(q)

    with torch._inductor.config.patch(fx_graph_cache=True, fx_graph_remote_cache=False):
        compile_once()
        hits = _cache_hits()
        compile_once()
        assert _cache_hits() > hits  # same version: the warm cache serves the compile
        hits = _cache_hits()
        monkeypatch.setattr(spec_module, "SOURCE_HASH", "another version")
        compile_once()
        assert _cache_hits() == hits  # another version's entries are never replayed


def test_the_opaque_gluon_operators_take_the_hash_last():
    """The FX graph cache keys the traced graph, where these calls' output strides come from fakes it does not see."""
    import bitlower.codegen.hopper.backward_op  # noqa: F401 - defines the operators
    import bitlower.codegen.hopper.op  # noqa: F401

    for name in ("hopper_fwd", "hopper_main", "hopper_bwd"):
        schema = getattr(torch.ops.bitlower, name).default._schema
        assert schema.arguments[-1].name == "source" and str(schema.arguments[-1].type) == "str", name
