"""``rows``: only the rows of a table that changed, with their indices (lossless)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pocketlearn.federated.codecs.format import Frame, PayloadError, check_shape
from pocketlearn.federated.codecs.stages.base import Budget, Stage, pop_tagged, typed_array, value_names


@dataclass(frozen=True)
class Rows(Stage):
    """Only the rows that changed, with their indices: lossless, for updates that touch few rows of a table.

    A keyboard model trained with partial embedding updates changes the embedding and output rows of the words
    its user typed, a few hundred of 10,000; this sends those. An array with most rows changed goes dense.
    """

    name: ClassVar[str] = "rows"
    lossy: ClassVar[bool] = False

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in value_names(frame):
            a = frame.arrays[n]
            table = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
            changed = np.flatnonzero(np.any(table != 0, axis=1))
            width = 2 if len(table) <= 1 << 16 else 4
            if len(changed) * (table.shape[1] * 4 + width) >= table.size * 4:
                continue  # dense is smaller
            out[n] = np.ascontiguousarray(table[changed])
            out[f"{n}#rows"] = changed.astype(np.uint16 if width == 2 else np.int32)
            meta[f"rows:{n}"] = list(a.shape)
        return Frame(out, meta)

    @property
    def expansion(self) -> float:
        return float("inf")  # a few changed rows of a large table: only the model's shapes bound it

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), Budget(limit, self.spec)
        for n, shape in pop_tagged(meta, "rows", None):
            rows = out.pop(f"{n}#rows", None)
            if rows is None or rows.dtype not in (np.uint16, np.int32) or rows.ndim != 1 or not check_shape(
                    shape, f"sparse rows of {n!r}"):
                raise PayloadError(f"sparse rows of {n!r} lack their indices or shape")
            budget.take(shape, n)
            values = typed_array(frame, n, np.float32)
            cols = int(np.prod(shape[1:], dtype=np.int64))
            if values.shape != (len(rows), cols) or (len(rows) and (
                    rows[0] < 0 or rows[-1] >= shape[0] or (np.diff(rows.astype(np.int64)) <= 0).any())):
                raise PayloadError(f"sparse rows of {n!r} do not match their increasing indices or the shape "
                                   f"{shape}")
            dense = np.zeros((shape[0], cols), np.float32)
            dense[rows.astype(np.int64)] = values
            out[n] = dense.reshape(shape)
        return Frame(out, meta)
