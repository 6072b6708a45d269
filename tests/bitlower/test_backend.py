"""``torch.compile(backend="bitlower")`` end to end: each attention style real models use.

Every test compiles with ``fullgraph=True`` (a graph break fails it), checks the number of
rewritten sites, and compares outputs and input gradients with ``bitlower.binary_attention``
on the same q, k, v (``check_rewrite``; tolerances per dtype in ``bitlower.testing``).
The full style matrix runs through AOTAutograd without Inductor (``inductor=False``, about
0.5 s a compile on 2 cores instead of 3-5 s); a subset of eval and train runs goes through
Inductor itself.
"""
import pytest
import torch

from bitlower.testing import AttentionVariant, check_rewrite

# name -> how a family of models writes attention
STYLES = {
    "deit: (q @ k.transpose(-2, -1)) * scale": AttentionVariant(),
    "timm: q = q * scale; q @ k.transpose": AttentionVariant(scale_at="q"),
    "hf: matmul(q, k.transpose(-1, -2)) / sqrt(d) + mask, F.softmax, dropout": AttentionVariant(
        product="torch.matmul", scale_op="div", transpose="transpose(-1, -2)", mask="additive",
        softmax="F.softmax", dropout=True),
    "hf eager: matmul(q, k.transpose(2, 3)) * scale, softmax(dtype=float32).to(q.dtype)": AttentionVariant(
        product="torch.matmul", transpose="transpose(2, 3)", softmax="F.softmax(dtype=float32)", mask="additive"),
    "diffusers (old): baddbmm(empty, q, kT, beta=0, alpha=scale) + bmm on (B*H, N, D)": AttentionVariant(
        product="baddbmm", mask="additive"),
    "bmm on (B*H, N, D), scale on q and k": AttentionVariant(product="bmm", scale_at="q_and_k"),
    "einsum bhnd,bhmd->bhnm, bool mask": AttentionVariant(product="einsum", mask="bool"),
    "einsum on (B*H, N, D)": AttentionVariant(product="einsum_flat", softmax="torch.softmax"),
    "permute(0, 1, 3, 2), nn.Softmax, masked_fill": AttentionVariant(
        product="method", transpose="permute", softmax="nn.Softmax", mask="bool"),
    "sdpa scale=": AttentionVariant(product="sdpa"),
    "sdpa float attn_mask": AttentionVariant(product="sdpa", mask="additive"),
    "sdpa bool attn_mask, dropout_p": AttentionVariant(product="sdpa", mask="bool", dropout=True),
    "cross attention N != M, D 72, Dv 24": AttentionVariant(n=9, m=20, head_dim=72, value_dim=24),
}


INDUCTOR_EVAL = ("deit", "sdpa float attn_mask")
INDUCTOR_TRAIN = ("timm", "hf", "diffusers (old)")
IDS = [s.split(":")[0] for s in STYLES]


def _no_dropout(variant: AttentionVariant) -> AttentionVariant:
    return AttentionVariant(**{**variant.__dict__, "dropout": False})  # active dropout is a skip, tested below


@pytest.mark.parametrize("style", list(STYLES), ids=IDS)
def test_style_is_rewritten_in_eval(style):
    variant = STYLES[style]
    check_rewrite(variant.module().eval(), variant.inputs(seed=1), variant.reference, inductor=False)


@pytest.mark.parametrize("style", list(STYLES), ids=IDS)
def test_style_is_rewritten_in_train_and_gradients_match(style):
    variant = _no_dropout(STYLES[style])
    check_rewrite(variant.module().train(), variant.inputs(seed=2), variant.reference, inductor=False)


@pytest.mark.parametrize("style", [s for s in STYLES if s.split(":")[0] in INDUCTOR_EVAL])
def test_style_through_inductor_eval(style):
    variant = STYLES[style]
    check_rewrite(variant.module().eval(), variant.inputs(seed=1), variant.reference)


@pytest.mark.parametrize("style", [s for s in STYLES if s.split(":")[0] in INDUCTOR_TRAIN])
def test_style_through_inductor_train(style):
    variant = _no_dropout(STYLES[style])
    check_rewrite(variant.module().train(), variant.inputs(seed=2), variant.reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(dtype):
    variant = AttentionVariant(product="torch.matmul", mask="additive", softmax="F.softmax(dtype=float32)", dtype=dtype)
    check_rewrite(variant.module().train(), variant.inputs(seed=3), variant.reference, inductor=False)


@pytest.mark.parametrize("grad_mode", ["stopgrad", "hamming"])
def test_grad_mode_option_reaches_the_operator(grad_mode):
    import bitlower

    variant = AttentionVariant(product="sdpa")
    check_rewrite(variant.module().train(), variant.inputs(seed=4),
                  lambda q, k, v, m: bitlower.binary_attention(q, k, v, scale=variant.scale, grad_mode=grad_mode),
                  options={"grad_mode": grad_mode}, inductor=False)


def test_active_dropout_in_training_is_left_to_inductor():
    variant = STYLES["hf: matmul(q, k.transpose(-1, -2)) / sqrt(d) + mask, F.softmax, dropout"]
    module = variant.module().train()
    q, k, v, mask = variant.inputs(seed=5)
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="expected 1 rewritten attention site"):
        check_rewrite(module, (q, k, v, mask), variant.reference, inductor=False)
