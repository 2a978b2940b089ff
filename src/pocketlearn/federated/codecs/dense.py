"""Uncompressed float32 payloads, and their exact size from the tensors' shapes."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from pocketlearn.federated.codecs.format import Frame, pack


def encode_dense(tensors: dict[str, Tensor]) -> bytes:
    """Float32 tensors by name in the wire format (no codec stages)."""
    return pack(Frame({n: tensors[n].detach().to(torch.float32).contiguous().numpy() for n in sorted(tensors)}), [])


def decode_dense(payload: bytes | memoryview, expected: dict[str, torch.Size] | None = None) -> dict[str, Tensor]:
    """What ``encode_dense`` wrote: the uncompressed codec's decode, so any other bytes raise PayloadError."""
    from pocketlearn.federated.codecs import Codec

    return Codec().decode(payload, expected)


@functools.lru_cache(maxsize=16)
def _header_size(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> int:
    """The bytes before the values in a dense payload of these tensors (the same for every client)."""
    empty = pack(Frame({n: np.zeros(shape, np.float32) for n, shape in shapes}), [])
    return len(empty) - 4 * sum(int(np.prod(shape, dtype=np.int64)) for _, shape in shapes)


def dense_size(shapes: dict[str, tuple[int, ...]]) -> int:
    """``len(encode_dense(t))`` for tensors of these shapes, without writing the payload.

    A dense payload is lossless (float32 in, float32 out), so a simulated client's update needs no round trip
    through it: only its exact size, which the shapes fix.
    """
    return _dense_size(tuple((n, tuple(shapes[n])) for n in sorted(shapes)))


@functools.lru_cache(maxsize=16)
def _dense_size(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> int:
    return _header_size(shapes) + 4 * sum(math.prod(shape) for _, shape in shapes)
