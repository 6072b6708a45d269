"""PTX of a mixed exp2 for the Gluon forward: in each group of ``every`` scores, ``every - 1`` on the MUFU
(``ex2.approx.ftz.f32``) and one as a degree-4 polynomial on the FMA pipes.

Why: ncu of the forward at (8, 8, 4096, 64) on the H200 (session 9) has the XU pipe (MUFU.EX2) at 65 % of
its peak, the FMA pipes at 18 % and issue slots at 54 %: moving one exp2 in ``every`` off the MUFU trades
10 issue slots for one MUFU slot.

Polynomial: ``x = max(x, -127)`` (``max.NaN``: NaN stays NaN; -inf gives exactly +0), ``t = x + 1.5 * 2**23``
(round to the nearest integer j in t's low mantissa bits), ``f = x - j`` in [-0.5, 0.5],
``p = 1 + c1 f + c2 f^2 + c3 f^3 + c4 f^4`` (relative minimax for 2**f with c0 = 1 exactly, Lawson
iterations in float64; float32 evaluation error <= 2.9e-6 relative over x in [-100, 15]), then j added
to p's exponent field as an integer (``p_bits + (t_bits << 23)``: t's high bits shift out). The clamp is
needed only where a score can be -inf or below -127 (masks, dense bias, the last tile's columns past M,
the running maximum); the static maximum bounds x in [-LIMIT, P_OFFSET] otherwise.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

COEFFICIENTS = ("0f3F317096", "0f3E7601BC", "0f3D64FE1C", "0f3C1D014D")  # c1..c4 as float32 hex
EVERY = (4, 8)  # group sizes the kernel accepts


def exp2_mix_asm(every: int, clamp: bool) -> tuple[str, str]:
    """``(asm, constraints)`` for ``inline_asm_elementwise(..., pack=every)`` on float32 scores."""
    if every not in EVERY:
        raise ValueError(f"every must be one of {EVERY}, got {every}")
    c1, c2, c3, c4 = COEFFICIENTS
    lines = ["{", ".reg .f32 x, t, j, f, p;", ".reg .b32 tb, pb;"]
    lines += [f"ex2.approx.ftz.f32 ${i}, ${every + i};" for i in range(every - 1)]
    last = f"${2 * every - 1}"
    lines.append(f"max.NaN.f32 x, {last}, 0fC2FE0000;" if clamp else f"mov.f32 x, {last};")
    lines += [
        "add.rn.f32 t, x, 0f4B400000;",  # 1.5 * 2**23
        "sub.rn.f32 j, t, 0f4B400000;",
        "sub.rn.f32 f, x, j;",
        f"fma.rn.f32 p, f, {c4}, {c3};",
        f"fma.rn.f32 p, p, f, {c2};",
        f"fma.rn.f32 p, p, f, {c1};",
        "fma.rn.f32 p, p, f, 0f3F800000;",
        "mov.b32 tb, t;",
        "mov.b32 pb, p;",
        "shl.b32 tb, tb, 23;",
        "add.s32 pb, pb, tb;",
        f"mov.b32 ${every - 1}, pb;",
        "}",
    ]
    return "\n".join(lines), ",".join(["=f"] * every + ["f"] * every)


MIX4, MIX4_CONSTRAINTS = (gl.constexpr(x) for x in exp2_mix_asm(4, False))
MIX4_CLAMP = gl.constexpr(exp2_mix_asm(4, True)[0])
MIX8, MIX8_CONSTRAINTS = (gl.constexpr(x) for x in exp2_mix_asm(8, False))
MIX8_CLAMP = gl.constexpr(exp2_mix_asm(8, True)[0])


@gluon.jit
def exp2(x, POLY_EVERY: gl.constexpr, CLAMP: gl.constexpr):
    """``exp2(x)`` of float32 scores: on the MUFU, or one in ``POLY_EVERY`` (4, 8) as a polynomial on the
    FMA pipes (``exp2_mix``; ``CLAMP`` where x can be -inf or below -127)."""
    if POLY_EVERY == 4:
        if CLAMP:
            y = gl.inline_asm_elementwise(MIX4_CLAMP, MIX4_CONSTRAINTS, [x], dtype=gl.float32, is_pure=True, pack=4)
        else:
            y = gl.inline_asm_elementwise(MIX4, MIX4_CONSTRAINTS, [x], dtype=gl.float32, is_pure=True, pack=4)
    elif POLY_EVERY == 8:
        if CLAMP:
            y = gl.inline_asm_elementwise(MIX8_CLAMP, MIX8_CONSTRAINTS, [x], dtype=gl.float32, is_pure=True, pack=8)
        else:
            y = gl.inline_asm_elementwise(MIX8, MIX8_CONSTRAINTS, [x], dtype=gl.float32, is_pure=True, pack=8)
    else:
        y = gl.exp2(x)
    return y
