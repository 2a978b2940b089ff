"""Codec stages: each turns a frame of named arrays into a smaller one and back; chained, e.g. top-k then 8-bit.

A stage touches the float32 arrays of the frame (the values) and leaves the others (indices, packed bits)
alone, so stages compose. Lossy stages that round do it stochastically and without bias (E[decoded] = input),
with a generator the caller seeds per (round, client) so that runs are reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from pocketlearn.federated.codecs.format import Frame, PayloadError


def _values(frame: Frame) -> list[str]:
    return [n for n, a in frame.arrays.items() if a.dtype == np.float32]


def _meta(frame: Frame, key: str) -> Any:
    if key not in frame.meta:
        raise PayloadError(f"payload lacks the metadata {key!r} its codec chain needs")
    return frame.meta[key]


class Stage:
    name: ClassVar[str]
    lossy: ClassVar[bool] = True

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        raise NotImplementedError

    def inverse(self, frame: Frame) -> Frame:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return self.name


@dataclass(frozen=True)
class Float16(Stage):
    """Half precision: 2x smaller, ~3 significant digits — harmless for updates."""

    name: ClassVar[str] = "fp16"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        return Frame({n: a.astype(np.float16) if a.dtype == np.float32 else a for n, a in frame.arrays.items()},
                     frame.meta)

    def inverse(self, frame: Frame) -> Frame:
        return Frame({n: a.astype(np.float32) if a.dtype == np.float16 else a for n, a in frame.arrays.items()},
                     frame.meta)


@dataclass(frozen=True)
class BFloat16(Stage):
    """bfloat16: float32's range with 8 bits of mantissa (no overflow on large updates, unlike fp16)."""

    name: ClassVar[str] = "bf16"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out = dict(frame.arrays)
        names = _values(frame)
        for n in names:  # the raw 16 bits travel as uint16
            out[n] = torch.from_numpy(frame.arrays[n]).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return Frame(out, {**frame.meta, "bf16": names})

    def inverse(self, frame: Frame) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        names = meta.pop("bf16", None)
        if not isinstance(names, list):
            raise PayloadError("payload lacks the list of its bfloat16 arrays")
        for n in names:
            a = _array(frame, n, np.uint16)
            out[n] = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
        return Frame(out, meta)


def _array(frame: Frame, name: str, dtype: Any) -> np.ndarray:
    a = frame.arrays.get(name)
    if a is None or a.dtype != dtype:
        raise PayloadError(f"payload lacks array {name!r} of type {np.dtype(dtype)}")
    return a


def _pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    padded = np.zeros(-(-len(q) // per) * per, np.uint8)
    padded[: len(q)] = q
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    if len(packed) * per < count:
        raise PayloadError(f"packed values hold {len(packed) * per} entries, the header says {count}")
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]


@dataclass(frozen=True)
class Quantize(Stage):
    """Stochastic uniform quantization to ``bits`` (8, 4, 2) per value between each array's min and max.

    Rounding up with probability equal to the remainder makes the decoded value unbiased (QSGD-style).
    """

    bits: int = 8
    name: ClassVar[str] = "q"

    def __post_init__(self) -> None:
        if self.bits not in (1, 2, 4, 8):
            raise ValueError(f"quantization bits must be 1, 2, 4 or 8, got {self.bits}")

    @property
    def spec(self) -> str:
        return f"q{self.bits}"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        levels = (1 << self.bits) - 1
        for n in _values(frame):
            a = frame.arrays[n].reshape(-1)
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            scale = (hi - lo) / levels if hi > lo else 1.0
            q = np.floor((a - lo) / scale + rng.random(a.size, dtype=np.float32)).clip(0, levels).astype(np.uint8)
            out[n] = _pack_bits(q, self.bits)
            meta[f"{self.spec}:{n}"] = [lo, scale, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    def inverse(self, frame: Frame) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for key in [k for k in frame.meta if k.startswith(f"{self.spec}:")]:
            n = key.split(":", 1)[1]
            lo, scale, shape = meta.pop(key)
            count = int(np.prod(shape, dtype=np.int64))
            q = _unpack_bits(_array(frame, n, np.uint8), self.bits, count)
            out[n] = (lo + q.astype(np.float32) * np.float32(scale)).astype(np.float32).reshape(shape)
        return Frame(out, meta)


@dataclass(frozen=True)
class TopK(Stage):
    """Top-k sparsification: only the ``fraction`` largest-magnitude entries of each array, with their indices."""

    fraction: float = 0.01
    name: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    @property
    def spec(self) -> str:
        return f"topk{self.fraction:g}"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in _values(frame):
            a = frame.arrays[n].reshape(-1)
            k = max(1, int(round(self.fraction * a.size))) if a.size else 0
            idx = np.sort(np.argpartition(np.abs(a), a.size - k)[a.size - k:]) if k < a.size else np.arange(a.size)
            out[n] = a[idx].astype(np.float32)
            # positions as a bitmap (size/8 bytes) or as 2- or 4-byte indices, whichever is smaller
            width = 2 if a.size <= 1 << 16 else 4
            if a.size / 8 < k * width:
                mask = np.zeros(a.size, np.uint8)
                mask[idx] = 1
                out[f"{n}#mask"] = _pack_bits(mask, 1)
            else:
                out[f"{n}#idx"] = idx.astype(np.uint16 if width == 2 else np.int32)
            meta[f"topk:{n}"] = list(frame.arrays[n].shape)
        return Frame(out, meta)

    def inverse(self, frame: Frame) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for key in [k for k in frame.meta if k.startswith("topk:")]:
            n = key.split(":", 1)[1]
            shape = meta.pop(key)
            size = int(np.prod(shape, dtype=np.int64))
            values = _array(frame, n, np.float32)
            idx = _positions(out.pop(f"{n}#idx", None), out.pop(f"{n}#mask", None), size)
            if len(idx) != len(values) or (len(idx) and (idx.min() < 0 or idx.max() >= size)):
                raise PayloadError(f"top-k positions of {n!r} do not match its {len(values)} values or its shape")
            dense = np.zeros(size, np.float32)
            dense[idx] = values
            out[n] = dense.reshape(shape)
        return Frame(out, meta)


def _positions(idx: np.ndarray | None, mask: np.ndarray | None, size: int) -> np.ndarray:
    if mask is not None and mask.dtype == np.uint8:
        return np.flatnonzero(_unpack_bits(mask, 1, size)).astype(np.int64)
    if idx is not None and idx.dtype in (np.uint16, np.int32):
        return idx.astype(np.int64)
    raise PayloadError("top-k payload lacks the positions of its values")


@dataclass(frozen=True)
class Sign(Stage):
    """1 bit per value: the sign, times each array's mean magnitude (signSGD with a scale; use error feedback)."""

    name: ClassVar[str] = "sign"

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in _values(frame):
            a = frame.arrays[n].reshape(-1)
            out[n] = _pack_bits((a >= 0).astype(np.uint8), 1)
            meta[f"sign:{n}"] = [float(np.abs(a).mean()) if a.size else 0.0, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    def inverse(self, frame: Frame) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for key in [k for k in frame.meta if k.startswith("sign:")]:
            n = key.split(":", 1)[1]
            scale, shape = meta.pop(key)
            count = int(np.prod(shape, dtype=np.int64))
            bits = _unpack_bits(_array(frame, n, np.uint8), 1, count).astype(np.float32)
            out[n] = ((2 * bits - 1) * np.float32(scale)).reshape(shape)
        return Frame(out, meta)


def parse_stage(spec: str) -> Stage:
    """``fp16``, ``bf16``, ``q8``/``q4``/``q2``, ``topk0.01``, ``sign``."""
    try:
        if spec == "fp16":
            return Float16()
        if spec == "bf16":
            return BFloat16()
        if spec == "sign":
            return Sign()
        if spec.startswith("q"):
            return Quantize(int(spec[1:]))
        if spec.startswith("topk"):
            return TopK(float(spec[4:]))
    except ValueError as err:
        raise ValueError(f"codec stage {spec!r}: {err}") from None
    raise ValueError(f"unknown codec stage {spec!r}; use fp16, bf16, q8, q4, q2, topk<fraction> (e.g. topk0.01), sign")
