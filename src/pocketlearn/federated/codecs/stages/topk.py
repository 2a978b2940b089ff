"""``topk<fraction>``: only the largest-magnitude entries, with their positions (biased: use error feedback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pocketlearn.federated.codecs.format import Frame, PayloadError
from pocketlearn.federated.codecs.stages.base import (
    Budget,
    Stage,
    pack_bits,
    pop_tagged,
    typed_array,
    unpack_bits,
    value_names,
)


@dataclass(frozen=True)
class TopK(Stage):
    """Top-k sparsification: only the ``fraction`` largest-magnitude entries of each array, with their indices."""

    fraction: float = 0.01
    name: ClassVar[str] = "topk"
    form: ClassVar[str] = "topk<fraction> (e.g. topk0.01)"
    takes: ClassVar[str] = "topk<fraction>, the share of largest values kept, in (0, 1], e.g. topk0.01"
    biased: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def from_spec(cls, number: str) -> TopK:
        return cls(float(number))

    @property
    def spec(self) -> str:
        return f"topk{self.fraction:g}"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in value_names(frame):
            a = frame.arrays[n].reshape(-1)
            k = max(1, int(round(self.fraction * a.size))) if a.size else 0
            idx = np.sort(np.argpartition(np.abs(a), a.size - k)[a.size - k:]) if k < a.size else np.arange(a.size)
            out[n] = a[idx].astype(np.float32)
            # positions as a bitmap (size/8 bytes) or as 2- or 4-byte indices, whichever is smaller
            width = 2 if a.size <= 1 << 16 else 4
            if a.size / 8 < k * width:
                mask = np.zeros(a.size, np.uint8)
                mask[idx] = 1
                out[f"{n}#mask"] = pack_bits(mask, 1)
            else:
                out[f"{n}#idx"] = idx.astype(np.uint16 if width == 2 else np.int32)
            meta[f"topk:{n}"] = list(frame.arrays[n].shape)
        return Frame(out, meta)

    @property
    def expansion(self) -> float:
        return 1 / self.fraction

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), Budget(limit, self.spec)
        for n, shape in pop_tagged(meta, "topk", None):
            size = budget.take(shape, n)
            values = typed_array(frame, n, np.float32)
            k = max(1, int(round(self.fraction * size))) if size else 0
            if values.shape != (k,):
                raise PayloadError(f"top-k of {n!r} carries {values.size} values; {self.spec} of shape {shape} "
                                   f"keeps {k}")
            idx = _positions(out.pop(f"{n}#idx", None), out.pop(f"{n}#mask", None), size)
            if len(idx) != k or (k and (idx[0] < 0 or idx[-1] >= size or (np.diff(idx) <= 0).any())):
                raise PayloadError(f"top-k positions of {n!r} are not {k} increasing indices below {size}")
            dense = np.zeros(size, np.float32)
            dense[idx] = values
            out[n] = dense.reshape(shape)
        return Frame(out, meta)


def _positions(idx: np.ndarray | None, mask: np.ndarray | None, size: int) -> np.ndarray:
    if mask is not None and mask.dtype == np.uint8 and idx is None:
        return np.flatnonzero(unpack_bits(mask, 1, size)).astype(np.int64)
    if idx is not None and idx.dtype in (np.uint16, np.int32) and idx.ndim == 1 and mask is None:
        return idx.astype(np.int64)
    raise PayloadError("top-k payload lacks the positions of its values")
