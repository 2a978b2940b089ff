"""What crosses the network in a secure-aggregation round, each with the bytes it would be sent as.

Sizes are counted from ``to_bytes()``: 4-byte big-endian client ids, raw 32-byte X25519 public keys,
AES-GCM blobs (nonce + ciphertext + tag), raw ring elements. ``from_bytes`` reads them back where they really
travel (a deployment over Flower); anything that does not parse is a :class:`SecAggError` naming the message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .crypto import NONCE_BYTES, SEED_BYTES, TAG_BYTES
from .errors import SecAggError
from .shamir import SHARE_BYTES, Share

ADVERT_BYTES = 4 + 2 * SEED_BYTES
SEALED_SHARE_BYTES = NONCE_BYTES + (8 + 2 * SHARE_BYTES) + TAG_BYTES  # AES-GCM of (pair ids, b, s_sk)
SHARE_MESSAGE_BYTES = 8 + SEALED_SHARE_BYTES  # sender and receiver ids, then the sealed shares


def _ids(ids: frozenset[int]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *sorted(ids))


class _Reader:
    """Reads a message front to back; running short or leaving bytes over is a SecAggError."""

    def __init__(self, raw: bytes, what: str):
        self.raw, self.at, self.what = bytes(raw), 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.raw):
            raise SecAggError(f"a {self.what} message is truncated ({len(self.raw)} bytes)")
        self.at += n
        return self.raw[self.at - n:self.at]

    def ints(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f">{n}I", self.take(4 * n))

    def ids(self) -> frozenset[int]:
        (n,) = self.ints(1)
        return frozenset(self.ints(n))

    def done(self) -> None:
        if self.at != len(self.raw):
            raise SecAggError(f"a {self.what} message has {len(self.raw) - self.at} bytes too many")


def split_records(raw: bytes, size: int, what: str) -> list[bytes]:
    """Fixed-size messages sent back to back (a client's neighbours' adverts, its inbox of shares)."""
    if len(raw) % size:
        raise SecAggError(f"{what}: {len(raw)} bytes is not a whole number of {size}-byte messages")
    return [raw[i:i + size] for i in range(0, len(raw), size)]


@dataclass(frozen=True)
class KeyAdvert:
    """Round 0, client → server → neighbours: the two public keys (share encryption, masking)."""

    client: int
    cipher_public: bytes
    mask_public: bytes

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.client) + self.cipher_public + self.mask_public

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyAdvert:
        r = _Reader(raw, "key advert")
        advert = cls(r.ints(1)[0], r.take(SEED_BYTES), r.take(SEED_BYTES))
        r.done()
        return advert


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1, client ``sender`` → server → ``receiver``: AES-GCM of the receiver's shares of b and s_sk."""

    sender: int
    receiver: int
    blob: bytes

    def to_bytes(self) -> bytes:
        return struct.pack(">II", self.sender, self.receiver) + self.blob

    @classmethod
    def from_bytes(cls, raw: bytes) -> EncryptedShare:
        if len(raw) != SHARE_MESSAGE_BYTES:
            raise SecAggError(f"an encrypted share is {SHARE_MESSAGE_BYTES} bytes, got {len(raw)}")
        sender, receiver = struct.unpack(">II", raw[:8])
        return cls(sender, receiver, bytes(raw[8:]))


@dataclass(frozen=True)
class KeyShares:
    """Round 1, client → server: a commitment to the self-mask seed and one encrypted share per neighbour."""

    client: int
    commitment: bytes
    shares: tuple[EncryptedShare, ...]

    def to_bytes(self) -> bytes:
        return (struct.pack(">II", self.client, len(self.shares)) + self.commitment
                + b"".join(s.to_bytes() for s in self.shares))

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyShares:
        r = _Reader(raw, "key shares")
        client, n = r.ints(2)
        commitment = r.take(SEED_BYTES)
        shares = tuple(EncryptedShare.from_bytes(r.take(SHARE_MESSAGE_BYTES)) for _ in range(n))
        r.done()
        return cls(client, commitment, shares)


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client → server: y_u, (D,) ring elements."""

    client: int
    vector: np.ndarray

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.client) + self.vector.tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes, dtype: np.dtype, size: int) -> MaskedInput:
        r = _Reader(raw, "masked input")
        client = r.ints(1)[0]
        vector = np.frombuffer(r.take(size * np.dtype(dtype).itemsize), dtype=dtype).copy()
        r.done()
        return cls(client, vector)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server → survivors: who sent a masked input and who shared keys but did not."""

    survivors: frozenset[int]
    dropped: frozenset[int]

    def to_bytes(self) -> bytes:
        return _ids(self.survivors) + _ids(self.dropped)

    @classmethod
    def from_bytes(cls, raw: bytes) -> UnmaskRequest:
        r = _Reader(raw, "unmask request")
        request = cls(r.ids(), r.ids())
        r.done()
        return request


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, survivor → server: shares of b_v for surviving v, of s_sk_v for dropped v — never both."""

    client: int
    self_mask_shares: dict[int, Share]
    key_shares: dict[int, Share]

    def to_bytes(self) -> bytes:
        parts = [struct.pack(">III", self.client, len(self.self_mask_shares), len(self.key_shares))]
        for shares in (self.self_mask_shares, self.key_shares):
            parts += [struct.pack(">I", owner) + s.to_bytes() for owner, s in sorted(shares.items())]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> UnmaskResponse:
        r = _Reader(raw, "unmask response")
        client, n_b, n_s = r.ints(3)
        tables: list[dict[int, Share]] = []
        for n in (n_b, n_s):
            table = {}
            for _ in range(n):
                owner = r.ints(1)[0]
                table[owner] = Share.from_bytes(r.take(SHARE_BYTES))
            tables.append(table)
        r.done()
        return cls(client, tables[0], tables[1])
