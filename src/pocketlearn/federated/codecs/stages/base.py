"""What every codec stage shares: the :class:`Stage` interface and the checks its inverse runs on a frame.

A stage touches the float32 arrays of the frame (the values) and leaves the others (indices, packed bits)
alone, so stages compose. Inverses trust nothing in the frame: every metadata entry is type-checked and every
size a stage will allocate (or draw random numbers for) is checked against ``limit``, the most values the
payload may decode to, first.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pocketlearn.federated.codecs.format import Frame, PayloadError, count_of

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class Stage:
    """One link of a codec chain, written in a spec as its ``name`` (plus a number when it takes one).

    The registry (:mod:`.registry`) maps ``name`` to the class; ``from_spec`` builds the stage from what follows
    the name, so a stage declares how it is written next to what it does.
    """

    name: ClassVar[str]  # the whole spec of a stage without a number, the prefix of one with a number
    form: ClassVar[str] = ""  # how the error for an unknown stage lists it (default: ``name``)
    takes: ClassVar[str] = ""  # stages with a number: how to write it, named when the number does not parse
    lossy: ClassVar[bool] = True
    biased: ClassVar[bool] = False  # E[decoded] != input: error feedback should carry what was lost

    @classmethod
    def from_spec(cls, number: str) -> Stage:
        """The stage for what follows ``name`` in its spec (``""`` for a stage that takes no number).

        Raises ValueError when ``number`` is not one this stage takes.
        """
        return cls()

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


def value_names(frame: Frame) -> list[str]:
    """The frame's float32 arrays: what a stage compresses (the rest are other stages' indices and bits)."""
    return [n for n, a in frame.arrays.items() if a.dtype == np.float32]


def pop_tagged(meta: dict[str, Any], tag: str, arity: int | None) -> list[tuple[str, Any]]:
    """(array name, metadata) of every ``tag:name`` entry, removed from ``meta``: what a stage left for its inverse.

    Each entry must be a list of ``arity`` items (a forged header may put anything there); ``None``: the entry is a
    shape, checked where it is used.
    """
    out = [(k.split(":", 1)[1], meta.pop(k)) for k in [k for k in meta if k.startswith(f"{tag}:")]]
    for n, entry in out:
        if arity is not None and (not isinstance(entry, list) or len(entry) != arity):
            raise PayloadError(f"payload metadata {tag}:{n} is {str(entry)[:60]}, not a list of {arity} items")
    return out


class Budget:
    """The values a stage's inverse may still allocate: each declared shape is taken from it before allocating."""

    def __init__(self, limit: int, stage: str) -> None:
        self.left, self.stage = limit, stage

    def take(self, shape: Any, name: str) -> int:
        count = count_of(shape, f"{self.stage} array {name!r}", self.left)
        self.left -= count
        return count


def header_number(value: Any, what: str) -> np.float32:
    """A finite float32 from the header (a quantizer's offset or step, a sign's scale)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) <= _FLOAT32_MAX:
        raise PayloadError(f"payload carries an invalid {what} {str(value)[:40]}: want a finite float32")
    return np.float32(value)


def header_seed(value: Any) -> int:
    """A 32-bit seed from the header (a rotation's or a random subset's)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise PayloadError(f"payload carries an invalid codec seed {value!r}")
    return value


def typed_array(frame: Frame, name: str, dtype: Any) -> np.ndarray:
    """The frame's array ``name``, refused unless it is there with type ``dtype``."""
    a = frame.arrays.get(name)
    if a is None or a.dtype != dtype:
        raise PayloadError(f"payload lacks array {name!r} of type {np.dtype(dtype)}")
    return a


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Values below ``2**bits`` (bits 1, 2, 4 or 8), ``8 // bits`` to a byte, the first in the lowest bits."""
    per = 8 // bits
    padded = np.zeros(-(-len(q) // per) * per, np.uint8)
    padded[: len(q)] = q
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` values :func:`pack_bits` packed, refused when ``packed`` is not exactly their size."""
    per = 8 // bits
    if packed.ndim != 1 or len(packed) != -(-count // per):
        raise PayloadError(f"packed values hold {packed.size * per} entries, the header says {count}")
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
