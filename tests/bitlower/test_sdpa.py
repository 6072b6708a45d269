"""bitlower.scaled_dot_product_attention: F.scaled_dot_product_attention's signature and argument
semantics, checked over SDPA's own argument matrix (ranks, L != S, bool/float masks of every
broadcast shape, is_causal, scale, enable_gqa) against SDPA itself run on the binary operands.

The oracle: with mean_abs weighting, binary attention equals SDPA on q' = mean|q| sgn(q) and
k' = mean|k| sgn(k) (means per (batch, head) over tokens and channels), so SDPA in float64 gives
the exact answer with SDPA's own mask, causal, scale and GQA handling.
"""
import itertools
import re

import pytest
import torch
import torch.nn.functional as F

import bitlower
from bitlower import scaled_dot_product_attention as binary_sdpa


def binary_operands(x):
    return x.abs().mean(dim=(-2, -1), keepdim=True) * torch.sign(x)  # (..., L, E)


def oracle(q, k, v, **kw):
    return F.scaled_dot_product_attention(binary_operands(q), binary_operands(k), v, **kw)


def test_signature_is_sdpas():
    import inspect
    doc = " ".join(F.scaled_dot_product_attention.__doc__.split())
    inside = re.match(r"scaled_dot_product_attention\((.*?)\) ->", doc).group(1)
    names = [part.split("=")[0].strip() for part in inside.split(",")]
    ours = list(inspect.signature(binary_sdpa).parameters)
    assert ours == names == ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                                 "enable_gqa"]
    defaults = [p.default for p in inspect.signature(binary_sdpa).parameters.values()][3:]
    assert defaults == [None, 0.0, False, None, False]


LEAD = {3: (2,), 4: (2, 3), 5: (2, 2, 3)}  # leading dims; the last one is the heads
MASKS = ["none", "bool_ls", "bool_keys", "float_ls", "float_full", "causal"]


def make_mask(kind, lead, L, S, g):
    if kind == "bool_ls":
        m = torch.rand(L, S, generator=g) > 0.3
        m[:, 0] = True  # every query keeps a key (fully masked rows are a separate contract)
        return m
    if kind == "bool_keys":  # padding mask over keys, broadcast over queries and heads
        m = torch.ones(*lead[:-1], 1, 1, S, dtype=torch.bool)
        m[..., S - 2:] = False
        return m
    if kind == "float_ls":
        return torch.randn(L, S, generator=g, dtype=torch.float64)
    if kind == "float_full":
        return torch.randn(*lead, L, S, generator=g, dtype=torch.float64)
    return None


@pytest.mark.parametrize("rank, mask_kind, scale, L, S", [
    (rank, mask, scale, L, S) for rank, mask, scale, (L, S) in itertools.product(
        (3, 4, 5), MASKS, (None, 0.3), ((7, 7), (5, 9)))])
def test_matches_sdpa_on_binary_operands(rank, mask_kind, scale, L, S):
    g = torch.Generator().manual_seed(rank * 100 + L)
    lead = LEAD[rank]
    q = torch.randn(*lead, L, 16, generator=g, dtype=torch.float64)
    k = torch.randn(*lead, S, 16, generator=g, dtype=torch.float64)
    v = torch.randn(*lead, S, 8, generator=g, dtype=torch.float64)
    kw = {"scale": scale}
    if mask_kind == "causal":
        kw["is_causal"] = True
    elif mask_kind != "none":
        kw["attn_mask"] = make_mask(mask_kind, lead, L, S, g)
    out = binary_sdpa(q, k, v, **kw)
    assert out.shape == (*lead, L, 8) and out.dtype == v.dtype
    torch.testing.assert_close(out, oracle(q, k, v, **kw), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gqa_and_broadcast_batch(is_causal):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 9, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 9, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 9, 24, generator=g, dtype=torch.float64)
    out = binary_sdpa(q, k, v, is_causal=is_causal, enable_gqa=True)
    torch.testing.assert_close(out, oracle(q, k, v, is_causal=is_causal, enable_gqa=True), rtol=1e-10, atol=1e-10)
    kb = torch.randn(1, 6, 9, 16, generator=g, dtype=torch.float64)  # batch 1 broadcasts
    vb = torch.randn(1, 6, 9, 24, generator=g, dtype=torch.float64)
    torch.testing.assert_close(binary_sdpa(q, kb, vb), oracle(q, kb.expand(2, -1, -1, -1), vb.expand(2, -1, -1, -1)),
                               rtol=1e-10, atol=1e-10)


def test_float32_is_within_reference_error():
    """The working-dtype result is as close to the float64 answer as SDPA's own float32 result is (k = 4)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 33, 16, generator=g) for _ in range(3))
    golden = oracle(q.double(), k.double(), v.double(), is_causal=True)
    err_ours = (binary_sdpa(q, k, v, is_causal=True).double() - golden).abs().max()
    err_sdpa = (oracle(q, k, v, is_causal=True).double() - golden).abs().max()
    assert err_ours <= 4 * err_sdpa + 1e-6


def test_drop_in_assignment_and_gradients(monkeypatch):
    monkeypatch.setattr(F, "scaled_dot_product_attention", bitlower.scaled_dot_product_attention)
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v, None, 0.0, True).sum().backward()  # positional, as SDPA
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dropout_p=0.1), ValueError, "no attention dropout"),
    (dict(dropout_p=1.5), ValueError, r"dropout_p must be a number in \[0, 1\)"),
    (dict(is_causal=True, attn_mask=torch.ones(8, 8, dtype=torch.bool)), ValueError, "attn_mask must be None"),
    (dict(attn_mask=torch.ones(3, 8)), ValueError, "broadcast"),
    (dict(attn_mask=torch.ones(8, 8, dtype=torch.int64)), TypeError, "bias"),
])
def test_clear_errors(kwargs, error, match):
    q = k = v = torch.randn(1, 2, 8, 16)
    with pytest.raises(error, match=match):
        binary_sdpa(q, k, v, **kwargs)


def test_gqa_head_mismatch_is_named():
    q, k = torch.randn(1, 6, 8, 16), torch.randn(1, 4, 8, 16)
    with pytest.raises(ValueError, match="multiple of key heads"):
        binary_sdpa(q, k, k, enable_gqa=True)


def test_transformers_attention_implementation():
    """attn_implementation="bitlower" gives what binarize_ with mean_abs and no learned bias gives."""
    transformers = pytest.importorskip("transformers")
    from bitlower.runtime import BinarizeConfig, binarize_
    from bitlower.sdpa import register_transformers_attention

    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    binarized = transformers.ViTForImageClassification(config).eval()
    binarized.load_state_dict(model.state_dict())
    binarize_(binarized, BinarizeConfig(bias="none", keep_teacher=False))
    x = torch.randn(2, 1, 8, 8)
    full = model(x).logits
    model.set_attn_implementation(register_transformers_attention())
    out = model(x).logits
    assert not torch.allclose(out, full)  # the attention did change
    torch.testing.assert_close(out, binarized(x).logits, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool_keys", "float_ls"])
def test_cuda_fused_path_within_sdpas_own_error(mask_kind):
    """On CUDA the drop-in runs the fused kernels: bf16 error to the float64 answer <= 4x SDPA's own bf16 error
    on the same binary operands (a few bf16 ulps either way)."""
    g = torch.Generator().manual_seed(7)
    lead, L, S = (2, 4), 77, 77
    q, k, v = (torch.randn(*lead, n, 64, generator=g, dtype=torch.float64) for n in (L, S, S))
    kw = {"is_causal": True} if mask_kind == "causal" else {}
    if mask_kind not in ("none", "causal"):
        kw["attn_mask"] = make_mask(mask_kind, lead, L, S, g)
    golden = oracle(q, k, v, **kw)
    cuda = lambda t: t.cuda().to(torch.bfloat16) if t.is_floating_point() else t.cuda()  # noqa: E731
    kw_cuda = {key: cuda(val) if isinstance(val, torch.Tensor) else val for key, val in kw.items()}
    ours = binary_sdpa(cuda(q), cuda(k), cuda(v), **kw_cuda).double().cpu()
    sdpa = oracle(cuda(q), cuda(k), cuda(v), **kw_cuda).double().cpu()
    assert (ours - golden).abs().max() <= 4 * (sdpa - golden).abs().max() + 1e-3
