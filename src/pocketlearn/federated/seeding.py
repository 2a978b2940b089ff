"""``np.random.default_rng([seed, rnd, client])`` for a whole cohort at once, the same streams.

Each client's visiting order comes from its own generator, seeded from (seed, round, client) as the anchors seed
theirs. Building one costs ~10 µs (most of it numpy's SeedSequence hashing, one client at a time); for a round of
100 small clients that was a quarter of the round. Here the hashing (SeedSequence's documented, stable
algorithm) runs as array operations over all clients, and one PCG64 is set to each client's state in turn.
A test checks every stream against numpy's own for many seeds.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence

import numpy as np

_MASK = 0xFFFFFFFF
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
_MASK128 = (1 << 128) - 1
_POOL = 4  # SeedSequence's pool size, in 32-bit words
VECTORIZED_FROM = 12  # clients: below this the array hashing's fixed ~60 µs costs more than it saves
U32 = np.uint32

_reused = threading.local()
Word = int | np.ndarray  # a word equal for every client (a Python int) or one per client (uint32 array)


def _hash_constants(start: int, multiplier: int, count: int) -> list[tuple[int, int]]:
    """The (xor, multiply) constants of successive hashes: they do not depend on the data."""
    out, h = [], start
    for _ in range(count):
        x, h = h, (h * multiplier) & _MASK
        out.append((x, h))
    return out


_MIXING = _hash_constants(0x43B0D7E5, 0x931E8875, _POOL * _POOL)
_OUTPUT = _hash_constants(0x8B51F9DD, 0x58F38DED, 8)
_OUT_XOR = np.array([x for x, _ in _OUTPUT], U32)
_OUT_MUL = np.array([m for _, m in _OUTPUT], U32)


def _hash(v: Word, constants: tuple[int, int]) -> Word:
    x, m = constants
    if isinstance(v, int):
        h = ((v ^ x) * m) & _MASK
        return h ^ (h >> 16)
    a = np.multiply(np.bitwise_xor(v, U32(x)), U32(m))  # uint32 arithmetic wraps as the C code's does
    return np.bitwise_xor(a, a >> U32(16))


def _mix(x: Word, y: Word) -> Word:
    if isinstance(x, int) and isinstance(y, int):
        r = (x * _MIX_L - y * _MIX_R) & _MASK
        return r ^ (r >> 16)
    a = np.subtract(_times(x, _MIX_L), _times(y, _MIX_R))
    return np.bitwise_xor(a, a >> U32(16))


def _times(v: Word, m: int) -> Word:
    return (v * m) & _MASK if isinstance(v, int) else np.multiply(v, U32(m))


def _pool(words: list[Word]) -> list[Word]:
    """SeedSequence's entropy pool from (at most) 4 words; words equal for all clients are hashed once."""
    mixer = [_hash(w, _MIXING[i]) for i, w in enumerate(words + [0] * (_POOL - len(words)))]
    j = _POOL
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                mixer[dst] = _mix(mixer[dst], _hash(mixer[src], _MIXING[j]))
                j += 1
    return mixer


def _state_words(pool: list[Word], k: int) -> np.ndarray:
    """``generate_state(4, np.uint64)`` of each client's pool: (k, 4) uint64."""
    columns = np.stack([np.broadcast_to(U32(w) if isinstance(w, int) else w, (k,)) for w in pool], 1)
    w = (columns[:, [0, 1, 2, 3, 0, 1, 2, 3]] ^ _OUT_XOR) * _OUT_MUL
    w ^= w >> U32(16)
    return np.ascontiguousarray(w).view(np.uint64)


def _pcg_state(words: list[int]) -> dict[str, int]:
    """PCG64's state after seeding with (seed, inc) = the words' two 128-bit halves (high word first)."""
    seed = (words[0] << 64) | words[1]
    inc = (((words[2] << 64) | words[3]) << 1 | 1) & _MASK128
    return {"state": ((inc + seed) * _PCG_MULT + inc) & _MASK128, "inc": inc}


@functools.cache
def _agrees_with_numpy() -> bool:
    """Whether this numpy seeds as the hashing here does (checked once: a numpy that changed is not trusted)."""
    ids = list(range(VECTORIZED_FROM))
    ours = [g.integers(1 << 62) for g in client_generators_unchecked(7, 3, ids)]
    return ours == [np.random.default_rng([7, 3, c]).integers(1 << 62) for c in ids]


def client_generators(seed: int, rnd: int, client_ids: Sequence[int]) -> Iterator[np.random.Generator]:
    """For each client in turn, a generator in the state of ``np.random.default_rng([seed, rnd, client])``.

    The same generator object is re-seeded for each client: draw from it before taking the next.
    """
    if not client_ids:
        return
    ids = np.asarray(client_ids)
    one_word = all(0 <= v <= _MASK for v in (seed, rnd)) and ids.min() >= 0 and ids.max() <= _MASK
    if len(ids) < VECTORIZED_FROM or not one_word or not _agrees_with_numpy():  # numpy's own, one at a time
        for c in client_ids:
            yield np.random.default_rng([seed, rnd, int(c)])
        return
    yield from client_generators_unchecked(seed, rnd, client_ids)


def client_generators_unchecked(seed: int, rnd: int, client_ids: Sequence[int]) -> Iterator[np.random.Generator]:
    """:func:`client_generators` by the array hashing alone (one-word seeds and ids)."""
    ids = np.asarray(client_ids)
    words = _state_words(_pool([int(seed), int(rnd), ids.astype(U32)]), len(ids)).tolist()
    if not hasattr(_reused, "generator"):  # one per thread: made once (a new PCG64 reads the OS's entropy)
        _reused.generator = np.random.Generator(np.random.PCG64(0))
    generator = _reused.generator
    for row in words:
        generator.bit_generator.state = {"bit_generator": "PCG64", "state": _pcg_state(row), "has_uint32": 0,
                                         "uinteger": 0}
        yield generator
