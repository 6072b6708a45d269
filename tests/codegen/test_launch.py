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
