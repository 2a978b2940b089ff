"""``q8``/``q4``/``q2``/``q1``: stochastic uniform quantization, unbiased (QSGD-style rounding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pocketlearn.federated.codecs.format import Frame
from pocketlearn.federated.codecs.stages.base import (
    Budget,
    Stage,
    header_number,
    pack_bits,
    pop_tagged,
    typed_array,
    unpack_bits,
    value_names,
)


@dataclass(frozen=True)
class Quantize(Stage):
    """Stochastic uniform quantization to ``bits`` (8, 4, 2) per value between each array's min and max.

    Rounding up with probability equal to the remainder makes the decoded value unbiased (QSGD-style).
    """

    bits: int = 8
    name: ClassVar[str] = "q"
    form: ClassVar[str] = "q8, q4, q2, q1"
    takes: ClassVar[str] = "q<bits>, with 1, 2, 4 or 8 bits per value, e.g. q8"

    def __post_init__(self) -> None:
        if self.bits not in (1, 2, 4, 8):
            raise ValueError(f"quantization bits must be 1, 2, 4 or 8, got {self.bits}")

    @classmethod
    def from_spec(cls, number: str) -> Quantize:
        return cls(int(number))

    @property
    def spec(self) -> str:
        return f"q{self.bits}"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        levels = (1 << self.bits) - 1
        for n in value_names(frame):
            a = frame.arrays[n].reshape(-1)
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            scale = (hi - lo) / levels if hi > lo else 1.0
            q = np.floor((a - lo) / scale + rng.random(a.size, dtype=np.float32)).clip(0, levels).astype(np.uint8)
            out[n] = pack_bits(q, self.bits)
            meta[f"{self.spec}:{n}"] = [lo, scale, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    @property
    def expansion(self) -> float:
        return 8 / self.bits

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), Budget(limit, self.spec)
        for n, (lo, scale, shape) in pop_tagged(meta, self.spec, 3):
            lo, scale = header_number(lo, "quantizer offset"), header_number(scale, "quantizer step")
            q = unpack_bits(typed_array(frame, n, np.uint8), self.bits, budget.take(shape, n))
            out[n] = (lo + q.astype(np.float32) * scale).astype(np.float32).reshape(shape)
        return Frame(out, meta)
