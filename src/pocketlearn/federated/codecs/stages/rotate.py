"""``rot``: a seeded random rotation that spreads outliers before a quantizer or a random subset (lossless)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pocketlearn.federated.codecs.format import Frame, PayloadError
from pocketlearn.federated.codecs.stages.base import Budget, Stage, header_seed, typed_array, value_names


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
        names = value_names(frame)
        seed = int(rng.integers(2**32))
        vec = np.concatenate([frame.arrays[n].reshape(-1) for n in names]) if names else np.zeros(0, np.float32)
        out = {n: a for n, a in frame.arrays.items() if n not in names}
        out["rot"] = _rotate(vec, seed)
        return Frame(out, {**frame.meta, "rot": [seed, [[n, list(frame.arrays[n].shape)] for n in names]]})

    def inverse(self, frame: Frame, limit: int) -> Frame:
        out, meta, budget = dict(frame.arrays), dict(frame.meta), Budget(limit, self.spec)
        entry = meta.pop("rot", None)
        if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) for e in entry[1]):
            raise PayloadError("payload lacks the seed and layout ([[name, shape], ...]) of its rotation")
        seed, layout = header_seed(entry[0]), entry[1]
        rotated = typed_array(frame, "rot", np.float32).reshape(-1)
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
