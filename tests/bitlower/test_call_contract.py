"""One operator contract (issue 13 item 3): the call spec converts to and from the operator's arguments
in ``bitlower.spec``; derived facts (q/k gradient, mean_abs chain, bias gradient) are defined there; the
autograd registration lives with the operator; the runtime calls the public ``binary_attention``."""
import ast
import dataclasses
import pathlib

import pytest
import torch

from bitlower import ops, reference
from bitlower.config import AttentionConfig
from bitlower.functional import binary_attention
from bitlower.source_hash import SOURCE_HASH
from bitlower.runtime.config import BinarizeConfig
from bitlower.runtime.core import BinaryAttentionCore, Geometry
from bitlower.spec import FWD_PARAMS, GRAD_MODES, WEIGHTINGS, CallSpec, bind_fwd_args, spec_of_fwd_args
from bitlower.weighting import stratified_planes

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_fwd_params_are_the_registered_schema():
    assert FWD_PARAMS == tuple(a.name for a in ops.FWD_OPERATOR._schema.arguments)


@pytest.mark.parametrize("spec", [
    CallSpec(scale=0.25),
    CallSpec(scale=0.5, weighting="token", bias_kind="table", grid=(2, 3, 1), grad_mode="hamming", pv_quant="int8",
             ste_clip=2.0, save_bits=False),
])
def test_spec_round_trips_through_the_operator_arguments(spec):
    q = torch.empty(1, 1, 4, 8)
    args = spec.fwd_args(q, q, q, kernel_options="x")
    bound = bind_fwd_args(args)
    assert spec_of_fwd_args(bound) == spec and bound["kernel_options"] == "x" and bound["q"] is q
    assert CallSpec.from_op_args(*spec.op_args(), save_bits=spec.save_bits) == spec
    assert bound["source"] == SOURCE_HASH  # bitlower's version in every emitted call (source_hash)
    assert spec_of_fwd_args(bind_fwd_args(args[:-3])) == dataclasses.replace(spec, save_bits=True)  # defaults


def test_bind_rejects_bad_calls():
    with pytest.raises(TypeError, match="lacks"):
        bind_fwd_args((None,) * 6)
    with pytest.raises(TypeError, match="takes 16 arguments"):
        bind_fwd_args((None,) * 17)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_derived_facts(weighting, grad_mode):
    spec = CallSpec(scale=1.0, weighting=weighting, grad_mode=grad_mode)
    assert spec.qk_grad == (grad_mode != "stopgrad")
    assert spec.mean_abs_chain == (weighting == "mean_abs" and grad_mode != "stopgrad")
    assert [CallSpec(1.0, bias_kind=kind).bias_grad for kind in ("none", "head", "table", "dense", "mask")] == [
        False, True, True, True, False]


def _qkv(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 9, 16, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("weighting", ["mean_abs", "none"])
def test_stopgrad_means_no_dq_dk_through_the_operator(weighting):
    q, k, v = _qkv()
    binary_attention(q, k, v, weighting=weighting, grad_mode="stopgrad").sum().backward()
    assert q.grad is None and k.grad is None and v.grad is not None and v.grad.abs().sum() > 0


def test_stratified_planes_through_the_public_api_match_the_reference():
    q, k, v = _qkv()
    out = binary_attention(q, k, v, weighting="bilinear", planes="stratified")
    (qp, a), (kp, b) = stratified_planes(q), stratified_planes(k)
    spec = CallSpec(scale=16 ** -0.5, weighting="bilinear")
    golden = reference.forward(qp.detach(), kp.detach(), v, a, b, None, spec)[0]
    torch.testing.assert_close(out, golden, rtol=0, atol=0)
    assert torch.equal(binary_attention(q, k, v, weighting="bilinear", planes="stratified"), out)  # deterministic
    out.sum().backward()  # the plane weights carry q's and k's gradient
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"weighting": "bilinear", "planes": "fixed"}, "planes must be one of"),
    ({"weighting": "mean_abs", "planes": "stratified"}, "planes is only taken with weighting 'bilinear'"),
    ({"weighting": "bilinear", "a": torch.ones(1, 2, 9)}, "a and b are only taken with weighting 'token'"),
])
def test_bad_weighting_arguments_are_named(kwargs, match):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=match):
        binary_attention(q, k, v, **kwargs)


def test_runtime_core_calls_the_public_api_and_compiles_without_breaks(monkeypatch):
    core = BinaryAttentionCore(Geometry(2, 16), BinarizeConfig(attention=AttentionConfig(weighting="bilinear"), bias="none"))
    core.eval()
    calls = []
    real = binary_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("planes"))
        return real(*args, **kwargs)

    monkeypatch.setattr("bitlower.runtime.core.binary_attention", spy)
    q, k, v = (x.detach().float() for x in _qkv())
    want = real(q, k, v, scale=0.25, weighting="bilinear", planes="stratified")
    assert torch.equal(core(q, k, v, scale=0.25), want) and calls == ["stratified"]
    monkeypatch.undo()
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: core(q, k, v, scale=0.25), backend="eager", fullgraph=True)
    assert torch.equal(compiled(q, k, v), want)


def _names(path: pathlib.Path) -> set[str]:
    """Attribute and imported names ``path`` uses."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
    return names


def test_the_operator_is_registered_with_itself_and_called_through_the_public_api():
    """Only ``bitlower/ops.py`` registers the autograd (``bitlower/autograd.py`` holds it); outside the
    operator's own modules nothing names the raw forward operator (passes use ``ops.FWD_OPERATOR``)."""
    files = [p for d in ("bitlower", "passes", "runtime") for p in (ROOT / d).glob("*.py")]
    registering = sorted(p.name for p in files if {"register_autograd", "register"} & _names(p)
                         and "autograd" in p.read_text() and p.parent.name != "runtime")
    assert registering == ["autograd.py", "ops.py"]
    raw = sorted(f"{p.parent.name}/{p.name}" for p in files if "binary_attention_fwd" in _names(p))
    assert raw == ["bitlower/functional.py", "bitlower/ops.py"]
