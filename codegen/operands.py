"""Host-side preparation of the kernels' bias and value-quantisation operands."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bitlower.reference import V_LEVELS
from bitlower.relpos import table_rows

from .tiles import BIAS_CODES, LOG2E


@dataclass
class BiasOperand:
    """What a kernel needs to read ``beta``.

    Attributes:
        code: constexpr bias code (see ``tiles.BIAS_CODES``).
        tensor: head bias ``(H,)`` float32; table ``(H, rows)`` float32 in log2 units; dense/mask:
            the caller's tensor expanded to ``(B, H, N, M)`` (stride 0 on broadcast dims).
        strides: ``(s_b, s_h, s_n, s_m)`` of the expanded view (zeros otherwise).
        rows: table rows; grid: ``(Gh, Gw, prefix)`` (zeros unless a table).
    """

    code: int
    tensor: torch.Tensor | None
    strides: tuple[int, int, int, int]
    rows: int
    grid: tuple[int, int, int]

    @property
    def has_prefix(self) -> bool:
        return self.grid[2] > 0


def bias_operand(bias: torch.Tensor | None, spec, shape4: tuple[int, int, int, int]) -> BiasOperand:
    """BiasOperand for ``bias`` of ``spec.bias_kind``; ``shape4`` is ``(B, H, N, M)``."""
    kind = spec.bias_kind
    code = BIAS_CODES[kind]
    zeros = (0, 0, 0, 0)
    if kind == "none":
        return BiasOperand(code, None, zeros, 0, (0, 0, 0))
    if kind == "head":
        return BiasOperand(code, bias.to(torch.float32).contiguous(), zeros, 0, (0, 0, 0))
    if kind == "table":
        gh, gw, prefix = spec.grid
        table = (bias.to(torch.float32) * LOG2E.value).t().contiguous()  # (H, rows), log2 units
        return BiasOperand(code, table, zeros, table_rows(gh, gw), (gh, gw, prefix))
    view = bias.expand(shape4)  # (B, H, N, M) view, stride 0 on broadcast dims
    return BiasOperand(code, view, tuple(view.stride()), 0, (0, 0, 0))


def value_scales(v: torch.Tensor):
    """Per (batch, head, channel) int8 scales of v, computed exactly as the reference does.

    Returns:
        ``(vscale, vstep)`` float32 ``(B, H, Dv)``: ``V^ = round(v * vscale) * vstep`` with
        ``vscale = 127 / max|v|`` and ``vstep = max|v| / 127`` (a zero channel uses 1).
    """
    vmax = v.to(torch.float32).abs().amax(dim=-2)  # (B, H, Dv)
    safe = torch.where(vmax > 0, vmax, 1.0)
    return (V_LEVELS / safe).contiguous(), (safe / V_LEVELS).contiguous()
