"""Codec stages: each turns a frame of named arrays into a smaller one and back; chained, e.g. top-k then 8-bit.

A stage touches the float32 arrays of the frame (the values) and leaves the others (indices, packed bits)
alone, so stages compose. Quantizers round stochastically and without bias (E[decoded] = input); top-k and sign
are biased (``Stage.biased``) and want error feedback. Randomness comes from a generator the caller seeds per
(round, client), so runs are reproducible and resumable.

Inverses trust nothing in the frame: every metadata entry is type-checked and every size a stage will allocate
(or draw random numbers for) is checked against ``limit``, the most values the payload may decode to, first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from pocketlearn.federated.codecs.format import Frame, PayloadError, check_shape, count_of


def _values(frame: Frame) -> list[str]:
    return [n for n, a in frame.arrays.items() if a.dtype == np.float32]


def _pop_tagged(meta: dict[str, Any], tag: str, arity: int | None) -> list[tuple[str, Any]]:
    """(array name, metadata) of every ``tag:name`` entry, removed from ``meta``: what a stage left for its inverse.

    Each entry must be a list of ``arity`` items (a forged header may put anything there); ``None``: the entry is a
    shape, checked where it is used.
    """
    out = [(k.split(":", 1)[1], meta.pop(k)) for k in [k for k in meta if k.startswith(f"{tag}:")]]
    for n, entry in out:
        if arity is not None and (not isinstance(entry, list) or len(entry) != arity):
            raise PayloadError(f"payload metadata {tag}:{n} is {str(entry)[:60]}, not a list of {arity} items")
    return out


class _Budget:
    """The values a stage's inverse may still allocate: each declared shape is taken from it before allocating."""

    def __init__(self, limit: int, stage: str) -> None:
        self.left, self.stage = limit, stage

    def take(self, shape: Any, name: str) -> int:
        count = count_of(shape, f"{self.stage} array {name!r}", self.left)
        self.left -= count
        return count


def _number(value: Any, what: str) -> np.float32:
    """A finite float32 from the header (a quantizer's offset or step, a sign's scale)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) <= _FLOAT32_MAX:
        raise PayloadError(f"payload carries an invalid {what} {str(value)[:40]}: want a finite float32")
    return np.float32(value)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Stage:
    name: ClassVar[str]
    lossy: ClassVar[bool] = True
    biased: ClassVar[bool] = False  # E[decoded] != input: error feedback should carry what was lost

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        raise NotImplementedError

    def inverse(self, frame: Frame, limit: int) -> Frame:
        """Undo :meth:`forward`; the arrays it creates hold at most ``limit`` values in all, else PayloadError."""
        raise NotImplementedError

    @property
    def expansion(self) -> float:
        """At most how many values the inverse makes of each value (or byte) it is given: bounds a decode."""
        return 1.0

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

    def inverse(self, frame: Frame, limit: int) -> Frame:
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

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        names = meta.pop("bf16", None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
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
    if packed.ndim != 1 or len(packed) != -(-count // per):
        raise PayloadError(f"packed values hold {packed.size * per} entries, the header says {count}")
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

    @property
    def expansion(self) -> float:
        return 8 / self.bits

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), _Budget(limit, self.spec)
        for n, (lo, scale, shape) in _pop_tagged(meta, self.spec, 3):
            lo, scale = _number(lo, "quantizer offset"), _number(scale, "quantizer step")
            q = _unpack_bits(_array(frame, n, np.uint8), self.bits, budget.take(shape, n))
            out[n] = (lo + q.astype(np.float32) * scale).astype(np.float32).reshape(shape)
        return Frame(out, meta)


@dataclass(frozen=True)
class TopK(Stage):
    """Top-k sparsification: only the ``fraction`` largest-magnitude entries of each array, with their indices."""

    fraction: float = 0.01
    name: ClassVar[str] = "topk"
    biased: ClassVar[bool] = True

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

    @property
    def expansion(self) -> float:
        return 1 / self.fraction

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), _Budget(limit, self.spec)
        for n, shape in _pop_tagged(meta, "topk", None):
            size = budget.take(shape, n)
            values = _array(frame, n, np.float32)
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
        return np.flatnonzero(_unpack_bits(mask, 1, size)).astype(np.int64)
    if idx is not None and idx.dtype in (np.uint16, np.int32) and idx.ndim == 1 and mask is None:
        return idx.astype(np.int64)
    raise PayloadError("top-k payload lacks the positions of its values")


@dataclass(frozen=True)
class Sign(Stage):
    """1 bit per value: the sign, times each array's mean magnitude (signSGD with a scale; use error feedback)."""

    name: ClassVar[str] = "sign"
    biased: ClassVar[bool] = True

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        out, meta = dict(frame.arrays), dict(frame.meta)
        for n in _values(frame):
            a = frame.arrays[n].reshape(-1)
            out[n] = _pack_bits((a >= 0).astype(np.uint8), 1)
            meta[f"sign:{n}"] = [float(np.abs(a).mean()) if a.size else 0.0, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    @property
    def expansion(self) -> float:
        return 8.0

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), _Budget(limit, self.spec)
        for n, (scale, shape) in _pop_tagged(meta, "sign", 2):
            scale = _number(scale, "sign scale")
            bits = _unpack_bits(_array(frame, n, np.uint8), 1, budget.take(shape, n)).astype(np.float32)
            out[n] = ((2 * bits - 1) * scale).reshape(shape)
        return Frame(out, meta)


def _hadamard(x: np.ndarray) -> np.ndarray:
    """Orthonormal Walsh-Hadamard transform of a power-of-two-long vector (its own inverse)."""
    n, h = x.size, 1
    while h < n:
        y = x.reshape(n // (2 * h), 2, h)
        x = np.concatenate([y[:, :1] + y[:, 1:], y[:, :1] - y[:, 1:]], axis=1).reshape(n)
        h *= 2
    return x / np.sqrt(n) if n else x


def _blocks(size: int, cap: int = 1 << 16) -> list[int]:
    """Power-of-two block lengths that add up to ``size`` exactly, so nothing is padded (9610 = 8192+1024+...)."""
    out = []
    while size:
        out.append(min(cap, 1 << (size.bit_length() - 1)))
        size -= out[-1]
    return out


def _block_hadamard(x: np.ndarray) -> np.ndarray:
    """The Walsh-Hadamard transform of each power-of-two block of ``x`` (float64): its own inverse."""
    out, start = [], 0
    for b in _blocks(x.size):
        out.append(_hadamard(x[start:start + b]))
        start += b
    return np.concatenate(out) if out else x


def _random_signs(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size).astype(np.float32) * 2 - 1


def _rotate(vec: np.ndarray, seed: int) -> np.ndarray:
    return _block_hadamard((vec * _random_signs(seed, vec.size)).astype(np.float64)).astype(np.float32)


def _unrotate(vec: np.ndarray, seed: int) -> np.ndarray:
    return (_block_hadamard(vec.astype(np.float64)) * _random_signs(seed, vec.size)).astype(np.float32)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise PayloadError(f"payload carries an invalid codec seed {value!r}")
    return value


@dataclass(frozen=True)
class Rotate(Stage):
    """A random rotation (random signs, then Walsh-Hadamard) of all values, as one vector, before quantizing.

    Rotated, an update's coordinates look alike (no outliers stretch the quantizer's range), so 2 bits or a
    random subset lose far less (Suresh et al. 2017; DRIVE/EDEN, Vargaftik et al. 2021-22). Lossless by itself;
    the seed travels in the header, the receiver rotates back.
    """

    name: ClassVar[str] = "rot"
    lossy: ClassVar[bool] = False

    def forward(self, frame: Frame, rng: np.random.Generator) -> Frame:
        names = _values(frame)
        seed = int(rng.integers(2**32))
        vec = np.concatenate([frame.arrays[n].reshape(-1) for n in names]) if names else np.zeros(0, np.float32)
        out = {n: a for n, a in frame.arrays.items() if n not in names}
        out["rot"] = _rotate(vec, seed)
        return Frame(out, {**frame.meta, "rot": [seed, [[n, list(frame.arrays[n].shape)] for n in names]]})

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), _Budget(limit, self.spec)
        entry = meta.pop("rot", None)
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entry[1]):
            raise PayloadError("payload lacks the seed and layout ([[name, shape], ...]) of its rotation")
        seed, layout = _seed(entry[0]), entry[1]
        rotated = _array(frame, "rot", np.float32).reshape(-1)
        sizes = [budget.take(shape, n) for n, shape in layout]
        if sum(sizes) != rotated.size or len({n for n, _ in layout}) != len(layout):
            raise PayloadError(f"rotated vector holds {rotated.size} values, its layout names {sum(sizes)} "
                               f"in {len(layout)} arrays")
        vec = _unrotate(rotated, seed)
        del out["rot"]
        start = 0
        for (n, shape), size in zip(layout, sizes, strict=True):
            out[n] = vec[start:start + size].reshape(shape)
            start += size
        return Frame(out, meta)


@dataclass(frozen=True)
class RandomSubset(Stage):
    """A random ``fraction`` of each array's entries, scaled by 1/fraction (unbiased): positions are not sent.

    Sender and receiver draw the same positions from a seed in the header, so a subset costs only its values
    (unlike top-k, which pays for positions and is biased). Put it after ``rot`` and before ``q2``.
    """

    fraction: float = 0.25
    name: ClassVar[str] = "rand"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"random-subset fraction must be in (0, 1], got {self.fraction}")

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
        for n in _values(frame):
            a = frame.arrays[n].reshape(-1)
            seed = int(rng.integers(2**32))
            idx = self._positions(seed, a.size)
            out[n] = (a[idx] * np.float32(a.size / max(len(idx), 1))).astype(np.float32)
            meta[f"rand:{n}"] = [seed, list(frame.arrays[n].shape)]
        return Frame(out, meta)

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), _Budget(limit, self.spec)
        for n, (seed, shape) in _pop_tagged(meta, "rand", 2):
            size, seed = budget.take(shape, n), _seed(seed)
            values = _array(frame, n, np.float32).reshape(-1)
            if len(values) != self._kept(size):  # before drawing ``size`` random numbers
                raise PayloadError(f"random subset of {n!r} carries {len(values)} values; {self.spec} of shape "
                                   f"{shape} keeps {self._kept(size)}")
            idx = self._positions(seed, size)
            dense = np.zeros(size, np.float32)
            dense[idx] = values
            out[n] = dense.reshape(shape)
        return Frame(out, meta)


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
        for n in _values(frame):
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
        out, meta, budget = dict(frame.arrays), dict(frame.meta), _Budget(limit, self.spec)
        for n, shape in _pop_tagged(meta, "rows", None):
            rows = out.pop(f"{n}#rows", None)
            if rows is None or rows.dtype not in (np.uint16, np.int32) or rows.ndim != 1 or not check_shape(
                    shape, f"sparse rows of {n!r}"):
                raise PayloadError(f"sparse rows of {n!r} lack their indices or shape")
            budget.take(shape, n)
            values = _array(frame, n, np.float32)
            cols = int(np.prod(shape[1:], dtype=np.int64))
            if values.shape != (len(rows), cols) or (len(rows) and (
                    rows[0] < 0 or rows[-1] >= shape[0] or (np.diff(rows.astype(np.int64)) <= 0).any())):
                raise PayloadError(f"sparse rows of {n!r} do not match their increasing indices or the shape "
                                   f"{shape}")
            dense = np.zeros((shape[0], cols), np.float32)
            dense[rows.astype(np.int64)] = values
            out[n] = dense.reshape(shape)
        return Frame(out, meta)


# stages that carry a number, with the form their spec takes (named in the error of a spec that does not parse)
_NUMBERED: dict[str, tuple[Callable[[Any], Stage], Callable[[str], Any], str]] = {
    "rand": (RandomSubset, float, "rand<fraction>, the share of values kept, in (0, 1], e.g. rand0.3"),
    "q": (Quantize, int, "q<bits>, with 1, 2, 4 or 8 bits per value, e.g. q8"),
    "topk": (TopK, float, "topk<fraction>, the share of largest values kept, in (0, 1], e.g. topk0.01"),
}


def parse_stage(spec: str) -> Stage:
    """``fp16``, ``bf16``, ``q8``/``q4``/``q2``/``q1``, ``topk0.01``, ``sign``, ``rot``, ``rand0.25``, ``rows``."""
    try:
        if spec == "fp16":
            return Float16()
        if spec == "bf16":
            return BFloat16()
        if spec == "sign":
            return Sign()
        if spec == "rot":
            return Rotate()
        if spec == "rows":
            return Rows()
    except ValueError as err:
        raise ValueError(f"codec stage {spec!r}: {err}") from None
    for prefix, (make, number, form) in _NUMBERED.items():
        if spec.startswith(prefix):
            try:
                return make(number(spec[len(prefix):]))
            except ValueError:  # "topk", "topkx", "topk2": the number is missing, not a number, or out of range
                raise ValueError(f"codec stage {spec!r}: write {form}") from None
    raise ValueError(f"unknown codec stage {spec!r}; use fp16, bf16, q8, q4, q2, q1, topk<fraction> (e.g. topk0.01), "
                     "sign, rot, rand<fraction> (e.g. rand0.3), rows")
