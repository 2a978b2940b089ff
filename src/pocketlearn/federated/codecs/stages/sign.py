"""``sign``: one bit per value (signSGD with a scale; biased: use error feedback)."""

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
class Sign(Stage):
    """1 bit per value: the sign, times each array's mean magnitude (signSGD with a scale; use error feedback)."""

    name: ClassVar[str] = "sign"
    biased: ClassVar[bool] = True

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in value_names(frame):
            a = frame.arrays[n].reshape(-1)
            out[n] = pack_bits((a >= 0).astype(np.uint8), 1)
            meta[f"sign:{n}"] = [float(np.abs(a).mean()) if a.size else 0.0, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    @property
    def expansion(self) -> float:
        return 8.0

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), Budget(limit, self.spec)
        for n, (scale, shape) in pop_tagged(meta, "sign", 2):
            scale = header_number(scale, "sign scale")
            bits = unpack_bits(typed_array(frame, n, np.uint8), 1, budget.take(shape, n)).astype(np.float32)
            out[n] = ((2 * bits - 1) * scale).reshape(shape)
        return Frame(out, meta)
