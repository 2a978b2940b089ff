"""``rand<fraction>``: a seeded random share of the values, rescaled (unbiased; positions are not sent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pocketlearn.federated.codecs.format import Frame, PayloadError
from pocketlearn.federated.codecs.stages.base import Budget, Stage, header_seed, pop_tagged, typed_array, value_names


@dataclass(frozen=True)
class RandomSubset(Stage):
    """A random ``fraction`` of each array's entries, scaled by 1/fraction (unbiased): positions are not sent.

    Sender and receiver draw the same positions from a seed in the header, so a subset costs only its values
    (unlike top-k, which pays for positions and is biased). Put it after ``rot`` and before ``q2``.
    """

    fraction: float = 0.25
    name: ClassVar[str] = "rand"
    form: ClassVar[str] = "rand<fraction> (e.g. rand0.3)"
    takes: ClassVar[str] = "rand<fraction>, the share of values kept, in (0, 1], e.g. rand0.3"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"random-subset fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def from_spec(cls, number: str) -> RandomSubset:
        return cls(float(number))

    @property
    def spec(self) -> str:
        return f"rand{self.fraction:g}"

    @property
    def expansion(self) -> float:
        return 1 / self.fraction

    def _kept(self, size: int) -> int:
        return max(1, round(self.fraction * size)) if size else 0

    def _positions(self, seed: int, size: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).permutation(size)[:self._kept(size)])

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in value_names(frame):
            a = frame.arrays[n].reshape(-1)
            seed = int(rng.integers(2**32))
            idx = self._positions(seed, a.size)
            out[n] = (a[idx] * np.float32(a.size / max(len(idx), 1))).astype(np.float32)
            meta[f"rand:{n}"] = [seed, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), Budget(limit, self.spec)
        for n, (seed, shape) in pop_tagged(meta, "rand", 2):
            size, seed = budget.take(shape, n), header_seed(seed)
            values = typed_array(frame, n, np.float32).reshape(-1)
            if len(values) != self._kept(size):  # before drawing ``size`` random numbers
                raise PayloadError(f"random subset of {n!r} carries {len(values)} values; {self.spec} of shape "
                                   f"{shape} keeps {self._kept(size)}")
            idx = self._positions(seed, size)
            dense = np.zeros(size, np.float32)
            dense[idx] = values
            out[n] = dense.reshape(shape)
        return Frame(out, meta)
