"""The primitives secure aggregation needs, all taken from ``cryptography``: none is hand-made.

X25519 agrees a secret between two parties, HKDF-SHA256 turns it into a key for one purpose, AES-GCM
encrypts the secret shares clients send each other through the server, and AES-256-CTR expands a 32-byte
seed into a mask. The PRG is AES-CTR rather than numpy's PCG64/Philox because a mask must be
computationally indistinguishable from uniform to anyone without the seed: PCG64's state can be recovered
from its output, and numpy promises no cryptographic strength for either; AES-CTR with AES-NI also runs at
several GB/s, so it is not the bottleneck.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32  # X25519 private keys, self-mask seeds and derived keys are all 32 bytes
NONCE_BYTES = 12  # AES-GCM nonce
TAG_BYTES = 16  # AES-GCM authentication tag
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair; ``public`` is the 32 raw bytes that go on the wire."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        return cls.from_private(X25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_private(cls, key: X25519PrivateKey) -> KeyPair:
        return cls(key, key.public_key().public_bytes(*_RAW))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key both ends derive alike; ``purpose`` separates the mask seed from the encryption key."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None,
                info=b"pocketlearn-secagg/" + purpose).derive(shared)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM encrypt; the random nonce travels in front of the ciphertext (which carries the tag)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; raises ``cryptography.exceptions.InvalidTag`` if anything was altered.

    A blob too short to hold a nonce and a tag is refused the same way (it cannot be authentic).
    """
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise InvalidTag()
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def expand(seed: bytes, size: int, dtype: np.dtype) -> np.ndarray:
    """``size`` uniform words of ``dtype`` from AES-256-CTR keyed by ``seed`` (a read-only array).

    The nonce is zero: every seed keys exactly one stream (pairwise and self-mask seeds are fresh per round).
    """
    width = np.dtype(dtype).itemsize
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(size * width))
    return np.frombuffer(stream, dtype=dtype)


def commit(secret: bytes) -> bytes:
    """SHA-256 commitment to a uniformly random secret, so a reconstruction can be checked."""
    return hashlib.sha256(secret).digest()


def random_seed() -> bytes:
    """A fresh 32-byte secret from the OS."""
    return os.urandom(SEED_BYTES)
