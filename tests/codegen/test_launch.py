"""``codegen.launch``: arguments reach Inductor's generated source as values, not constexpr objects; row alignment hints."""
import pytest
import torch
import triton
import triton.language as tl

from bitlower.codegen.launch import launch

FORM = tl.constexpr(1)


@triton.jit
def _fill_kernel(out_ptr, n, VALUE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full([BLOCK], VALUE, tl.float32), mask=offs < n)


def test_a_constexpr_object_argument_is_refused_by_name():
    out = torch.zeros(8)
    with pytest.raises(TypeError, match="VALUE is a tl.constexpr object"):
        launch(_fill_kernel, (1,), out, 8, VALUE=FORM, BLOCK=8)


def test_the_value_runs():
    out = torch.zeros(8)
    launch(_fill_kernel, (1,), out, 5, VALUE=FORM.value, BLOCK=8)
    assert out.tolist() == [1.0] * 5 + [0.0] * 3


@pytest.mark.parametrize("strides, expected", [((64,), 16), ((72,), 8), ((72, 64), 8), ((36,), 4), ((73,), 1),
                                                ((0,), 16), ((144, 216), 8)])
def test_row_alignment_is_the_largest_power_of_two_dividing_every_stride(strides, expected):
    from bitlower.codegen.tiles import row_alignment

    assert row_alignment(*strides) == expected


def test_operand_alignment_covers_batch_head_and_row_strides():
    """A (B, N, H, 72) view has head stride 72 (8-aligned, not the 16 the JIT marks); size-1 dims do not count."""
    from bitlower.codegen.tiles import operand_alignment

    qkv = torch.empty(2, 5, 3, 4, 72)  # (B, N, 3, H, D), a fused projection
    q = qkv[:, :, 0].transpose(1, 2)  # (B, H, N, D): strides (N*3*H*D, D, 3*H*D, 1)
    assert operand_alignment(q) == 8
    assert operand_alignment(torch.empty(2, 4, 5, 64)) == 16
    odd = torch.empty(1, 1, 5, 64).as_strided((1, 1, 5, 64), (7, 3, 64, 1))  # B = H = 1: their strides never move
    assert operand_alignment(odd) == 16
    assert operand_alignment(torch.empty(2, 4, 5, 64), torch.empty(2, 4, 5, 73)[..., :64]) == 1
