"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field of M521 = 2^521 - 1.

Plain big-int arithmetic (Shamir 1979): a random polynomial of degree t-1 whose constant term is the secret,
evaluated at each holder's point; any t points give the secret back by Lagrange interpolation at 0 and
t-1 points say nothing about it. The field is much larger than 2^256, so a share of another secret almost
surely interpolates to a number that does not fit in 32 bytes, which :func:`combine` reports; a small shift
of a share may not, so callers check the result against a commitment or a public key.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from pocketlearn.errors import ConfigError

from .errors import SecAggError

PRIME = 2**521 - 1  # a Mersenne prime
Y_BYTES = 66  # ceil(521 / 8)


@dataclass(frozen=True)
class Share:
    """The point (x, y) of one holder; x > 0 (x = 0 would be the secret itself)."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        if len(raw) != 4 + Y_BYTES:
            raise SecAggError(f"a share is {4 + Y_BYTES} bytes, got {len(raw)}")
        share = cls(int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big"))
        share.check()
        return share

    def check(self) -> None:
        """Refuse a point no holder could have: x = 0 (the secret's own point) or y outside the field."""
        if not (isinstance(self.x, int) and isinstance(self.y, int)) or isinstance(self.x, bool):
            raise SecAggError(f"a share's point must be two integers, got ({self.x!r}, {self.y!r})")
        if not 1 <= self.x < 2**32 or not 0 <= self.y < PRIME:
            raise SecAggError(f"a share's point ({self.x}, ...) is outside the field: x must be in 1..2^32-1 and "
                              "y in 0..2^521-2; the share is corrupted")


SHARE_BYTES = 4 + Y_BYTES


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[Share]:
    """One share of ``secret`` per point in ``xs``; any ``threshold`` of them reconstruct it."""
    if not 1 <= threshold <= len(xs):
        raise ConfigError(f"threshold must be between 1 and the {len(xs)} share holders, got {threshold}")
    if len(set(xs)) != len(xs) or min(xs) < 1:
        raise ConfigError(f"share points must be distinct and positive, got {sorted(xs)}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share], threshold: int, size: int = 32) -> bytes:
    """The ``size``-byte secret behind ``threshold`` of ``shares`` (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot reconstruct a secret shared with threshold {threshold}")
    points = shares[:threshold]
    xs = tuple(s.x for s in points)
    if len(set(xs)) != len(xs):
        raise SecAggError(f"two shares claim the same point: {sorted(xs)}")
    secret = sum(s.y * w for s, w in zip(points, _weights_at_zero(xs), strict=True)) % PRIME
    if secret >= 1 << (8 * size):
        raise SecAggError(f"shares at points {xs} do not reconstruct a {size}-byte secret: "
                          "at least one is corrupted or belongs to another secret")
    return secret.to_bytes(size, "big")


@functools.lru_cache(maxsize=1024)
def _weights_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange weights L_i(0) = Π_{j≠i} x_j / (x_j − x_i), O(t²) to compute.

    Cached: the server reuses them for every client whose shares came from the same holders, which in the
    all-pairs protocol is every client.
    """
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)
