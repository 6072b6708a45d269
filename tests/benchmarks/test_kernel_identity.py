"""benchmarks/kernel_identity.py's fingerprints: reordering independent operations is seen as such, a change is not."""
from __future__ import annotations


import pytest


@pytest.fixture(scope="module")
def ki(load_script):
    return load_script("kernel_identity")


class _Kernel:
    arg_names = ["x_ptr", "n"]


SIGNATURE = {"x_ptr": "*fp32", "n": "i32"}
BODY = """module {{
  tt.func public @k(%x_ptr: !tt.ptr<f32> loc("x_ptr"(#loc)), %n: i32 loc("n"(#loc))) {{
    %0 = arith.constant 1 : i32 loc(#loc1)
{ops}
    tt.return loc(#loc3)
  }} loc(#loc)
}} loc(#loc)
#loc1 = loc("k.py":3:4)"""
A = "    %1 = arith.addi %n, %0 : i32 loc(#loc1)\n    %2 = arith.muli %n, %n : i32 loc(#loc2)"
B = "    %7 = arith.muli %n, %n : i32 loc(#loc9)\n    %8 = arith.addi %n, %0 : i32 loc(#loc4)"
C = "    %1 = arith.subi %n, %0 : i32 loc(#loc1)\n    %2 = arith.muli %n, %n : i32 loc(#loc2)"


def test_reordered_operations_share_the_dataflow_hash_not_the_ordered_one(ki):
    a, b, c = (BODY.format(ops=ops) for ops in (A, B, C))
    hashes = [ki.dataflow_hash(text, _Kernel, SIGNATURE) for text in (a, b, c)]
    assert hashes[0] == hashes[1] != hashes[2]
    bodies = [ki.mask_ttir(text, _Kernel, SIGNATURE)[1] for text in (a, b)]
    assert bodies[0] != bodies[1]  # the ordered fingerprint sees the swap
    assert "loc" not in bodies[0] and "%n" in bodies[0]  # locations dropped, arguments named
