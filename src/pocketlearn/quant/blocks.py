"""Block-wise quantized matrices: 4- and 5-bit (scale and minimum per group), 8-bit (scale per group).

The layouts are GGUF's Q4_1, Q5_1 and Q8_0 (groups of 32 along a row, fp16 constants), kept as separate
tensors so a row range or a set of rows dequantizes on its own: a layer dequantizes only while it computes,
an embedding only the rows it reads, and the weights can stay memory-mapped from a file. 5 bits exist so
that a GGUF's 5-bit tensors (Q5_0, Q5_K) are kept as the file has them rather than made worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError

Bits = Literal[4, 5, 8]
GROUP = 32  # values per group, as in GGUF's Q4_1 / Q5_1 / Q8_0 blocks
REFITS = 3  # least-squares refits of a 4-bit group's scale and minimum


@dataclass
class QuantizedMatrix:
    """A (rows, cols) float matrix stored as ``bits``-bit groups of :data:`GROUP` values along each row.

    4-bit: ``data`` (rows, groups, 16) uint8, two values per byte (low nibbles hold a group's first 16);
    value = scale · q + offset. 5-bit: the same low four bits, and ``high`` (rows, groups, 4) uint8 holds
    each value's fifth bit (bit i of the group's 32-bit word for value i). 8-bit: ``data`` (rows, groups, 32)
    int8; value = scale · q.
    """

    data: Tensor
    scale: Tensor  # (rows, groups) fp16
    offset: Tensor | None  # (rows, groups) fp16 for 4- and 5-bit, None for 8-bit
    cols: int
    high: Tensor | None = None  # (rows, groups, 4) uint8 for 5-bit

    @property
    def bits(self) -> Bits:
        return 8 if self.offset is None else 5 if self.high is not None else 4

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def tensors(self) -> dict[str, Tensor]:
        out = {"data": self.data, "scale": self.scale, "offset": self.offset, "high": self.high}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def dequantize(self, rows: Tensor | slice | None = None) -> Tensor:
        """The fp32 values of all rows, of a row slice, or of the rows an index tensor names (in its order)."""
        pick = slice(None) if rows is None else rows
        data, scale = self.data[pick], self.scale[pick].float().unsqueeze(-1)
        if self.offset is None:
            values = data.float().mul_(scale)
        else:
            q = torch.cat([data & 0x0F, data >> 4], dim=-1)  # (n, groups, 32)
            if self.high is not None:
                q |= _unpack_bits(self.high[pick]) << 4
            values = q.float().mul_(scale).add_(self.offset[pick].float().unsqueeze(-1))
        values = values.reshape(values.shape[0], -1)
        return values if values.shape[1] == self.cols else values[:, :self.cols].contiguous()


def quantize(weight: Tensor, bits: Bits = 4) -> QuantizedMatrix:
    """Quantize a 2-D float matrix group by group along its rows (the last group zero-padded)."""
    if weight.dim() != 2:
        raise ConfigError(f"quantize expects a 2-D weight, got shape {tuple(weight.shape)}")
    if bits not in (4, 5, 8):
        raise ConfigError(f"bits should be 4, 5 or 8, got {bits}")
    rows, cols = weight.shape
    if weight.is_meta:  # a skeleton (a model file's layout, or an estimate): shapes only, nothing to fit
        return _meta_matrix(rows, cols, bits)
    pad = -cols % GROUP
    x = torch.nn.functional.pad(weight.detach().float(), (0, pad)).view(rows, -1, GROUP)
    if bits == 8:
        scale = (x.abs().amax(-1) / 127).half()
        q = torch.round(x / _nonzero(scale.float()).unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
        return QuantizedMatrix(q, scale, None, cols)
    scale, offset, q = _fit_levels(x, (1 << bits) - 1)
    low = q & 0x0F
    packed = (low[..., :16] | (low[..., 16:] << 4)).to(torch.uint8)
    return QuantizedMatrix(packed, scale, offset, cols, _pack_bits(q >> 4) if bits == 5 else None)


def _pack_bits(bit: Tensor) -> Tensor:
    """(…, 32) values 0/1 as (…, 4) bytes: value i is bit i % 8 of byte i // 8."""
    weights = 1 << torch.arange(8, dtype=torch.int16)
    return (bit.view(*bit.shape[:-1], 4, 8).to(torch.int16) * weights).sum(-1).to(torch.uint8)


def _unpack_bits(packed: Tensor) -> Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).flatten(-2)


def _meta_matrix(rows: int, cols: int, bits: Bits) -> QuantizedMatrix:
    groups = -(-cols // GROUP)
    scale = torch.empty(rows, groups, dtype=torch.float16, device="meta")
    if bits == 8:
        return QuantizedMatrix(torch.empty(rows, groups, GROUP, dtype=torch.int8, device="meta"), scale, None, cols)
    packed = torch.empty(rows, groups, GROUP // 2, dtype=torch.uint8, device="meta")
    high = torch.empty(rows, groups, GROUP // 8, dtype=torch.uint8, device="meta") if bits == 5 else None
    return QuantizedMatrix(packed, scale, torch.empty_like(scale), cols, high)


def _fit_levels(x: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scale, minimum (fp16) and levels 0..``top`` per group.

    Candidates: min/max; the group's own grid (its smallest gap between values as the scale), which recovers
    exactly a group that a model file stored with at most ``top`` + 1 levels; then least-squares refits of
    the best so far (they help groups with outliers). Each group keeps its candidate of least squared error.
    """
    lo, hi = x.amin(-1), x.amax(-1)
    scale, offset = ((hi - lo) / top).half(), lo.half()
    q = _levels(x, scale, offset, top)
    best = _error(x, q, scale, offset)
    gaps = x.sort(-1).values.diff(dim=-1)
    step = gaps.masked_fill(gaps <= 1e-3 * (hi - lo).unsqueeze(-1), torch.inf).amin(-1)
    candidate = (torch.where(step.isinf(), scale.float(), step).half(), offset)
    for refit in range(REFITS + 1):
        new_scale, new_offset = _least_squares(x, q) if refit else candidate
        new_q = _levels(x, new_scale, new_offset, top)
        err = _error(x, new_q, new_scale, new_offset)
        better = err < best
        scale, offset = torch.where(better, new_scale, scale), torch.where(better, new_offset, offset)
        q, best = torch.where(better.unsqueeze(-1), new_q, q), torch.minimum(err, best)
    return scale, offset, q


def _levels(x: Tensor, scale: Tensor, offset: Tensor, top: int) -> Tensor:
    s = _nonzero(scale.float()).unsqueeze(-1)
    return torch.round((x - offset.float().unsqueeze(-1)) / s).clamp_(0, top).to(torch.int16)


def _error(x: Tensor, q: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    approx = q.float() * scale.float().unsqueeze(-1) + offset.float().unsqueeze(-1)
    return (x - approx).pow(2).sum(-1)


def _least_squares(x: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """The scale and offset minimizing ‖x − (scale·q + offset)‖² for fixed levels q, per group."""
    qf = q.float()
    n = x.shape[-1]
    sq, sx = qf.sum(-1), x.sum(-1)
    var = n * qf.pow(2).sum(-1) - sq.pow(2)
    scale = torch.where(var > 0, (n * (qf * x).sum(-1) - sq * sx) / var.clamp_min(1e-12), 0.0)
    offset = (sx - scale * sq) / n
    return scale.clamp_min(0).half(), offset.half()


def _nonzero(s: Tensor) -> Tensor:
    return torch.where(s == 0, torch.ones_like(s), s)
