"""16-bit floats: ``fp16`` and ``bf16`` halve a payload and lose only what updates can spare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from pocketlearn.federated.codecs.format import Frame, PayloadError
from pocketlearn.federated.codecs.stages.base import Stage, typed_array, value_names


@dataclass(frozen=True)
class Float16(Stage):
    """Half precision: 2x smaller, ~3 significant digits — harmless for updates."""

    name: ClassVar[str] = "fp16"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        return Frame({n: a.astype(np.float16) if a.dtype == np.float32 else a for n, a in frame.arrays.items()},
                     frame.meta)

    def inverse(self, frame: Frame, limit: int) -> Frame:
        return Frame({n: a.astype(np.float32) if a.dtype == np.float16 else a for n, a in frame.arrays.items()},
                     frame.meta)


@dataclass(frozen=True)
class BFloat16(Stage):
    """bfloat16: float32's range with 8 bits of mantissa (no overflow on large updates, unlike fp16)."""

    name: ClassVar[str] = "bf16"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out = dict(frame.arrays)
        names = value_names(frame)
        for n in names:  # the raw 16 bits travel as uint16
            out[n] = torch.from_numpy(frame.arrays[n]).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return Frame(out, {**frame.meta, "bf16": names})

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        names = meta.pop("bf16", None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PayloadError("payload lacks the list of its bfloat16 arrays")
        for n in names:
            a = typed_array(frame, n, np.uint16)
            out[n] = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
        return Frame(out, meta)
