"""What crosses the network in a secure-aggregation round, each with the bytes it would be sent as.

Sizes are counted from ``to_bytes()``: 4-byte big-endian client ids, raw 32-byte X25519 public keys,
AES-GCM blobs (nonce + ciphertext + tag), raw ring elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .shamir import Share


def _ids(ids: frozenset[int]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *sorted(ids))


@dataclass(frozen=True)
class KeyAdvert:
    """Round 0, client → server → neighbours: the two public keys (share encryption, masking)."""

    client: int
    cipher_public: bytes
    mask_public: bytes

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.client) + self.cipher_public + self.mask_public


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1, client ``sender`` → server → ``receiver``: AES-GCM of the receiver's shares of b and s_sk."""

    sender: int
    receiver: int
    blob: bytes

    def to_bytes(self) -> bytes:
        return struct.pack(">II", self.sender, self.receiver) + self.blob


@dataclass(frozen=True)
class KeyShares:
    """Round 1, client → server: a commitment to the self-mask seed and one encrypted share per neighbour."""

    client: int
    commitment: bytes
    shares: tuple[EncryptedShare, ...]

    def to_bytes(self) -> bytes:
        return (struct.pack(">II", self.client, len(self.shares)) + self.commitment
                + b"".join(s.to_bytes() for s in self.shares))


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client → server: y_u, (D,) ring elements."""

    client: int
    vector: np.ndarray

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.client) + self.vector.tobytes()


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server → survivors: who sent a masked input and who shared keys but did not."""

    survivors: frozenset[int]
    dropped: frozenset[int]

    def to_bytes(self) -> bytes:
        return _ids(self.survivors) + _ids(self.dropped)


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
