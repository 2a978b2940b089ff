"""How an update travels: serialized to bytes, so every byte counted is a byte that would cross the network."""

from __future__ import annotations

import functools
import json
import struct

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import PocketlearnError


class PayloadError(PocketlearnError):
    """A client message that cannot be decoded (truncated, wrong shapes, not ours)."""


_MAGIC = b"PLU1"


def _header(shapes: dict[str, tuple[int, ...]]) -> bytes:
    return _header_of(tuple((n, tuple(shapes[n])) for n in sorted(shapes)))


@functools.lru_cache(maxsize=64)
def _header_of(entries: tuple[tuple[str, tuple[int, ...]], ...]) -> bytes:
    header = json.dumps([[n, list(shape)] for n, shape in entries]).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header


def encode_dense(tensors: dict[str, Tensor]) -> bytes:
    """Float32 tensors by name: a JSON header (names, shapes) and the raw little-endian values."""
    names = sorted(tensors)
    body = b"".join(tensors[n].detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
                    for n in names)
    return _header({n: tuple(tensors[n].shape) for n in names}) + body


def encode_dense_rows(stacked: dict[str, Tensor], out: np.ndarray | None = None) -> np.ndarray:
    """``encode_dense`` of each client's row of K-stacked tensors (K, *shape), as rows of one (K, L) byte array.

    Row k holds exactly the bytes ``encode_dense`` gives for client k; writing all K into one buffer (``out``,
    reused across rounds when its shape fits) saves K allocations of fresh pages.
    """
    names = sorted(stacked)
    header = np.frombuffer(_header({n: tuple(stacked[n].shape[1:]) for n in names}), np.uint8)
    k = len(stacked[names[0]])
    width = len(header) + 4 * sum(stacked[n][0].numel() for n in names)
    if out is None or out.shape != (k, width):
        out = np.empty((k, width), np.uint8)
    out[:, : len(header)] = header
    offset = len(header)
    for n in names:  # each tensor's rows straight into its columns: one copy, no concatenated temporary
        values = stacked[n].detach().to(torch.float32).reshape(k, -1).numpy().astype("<f4", copy=False)
        out[:, offset:offset + 4 * values.shape[1]] = values.view(np.uint8)
        offset += 4 * values.shape[1]
    return out


def decode_dense(payload: bytes) -> dict[str, Tensor]:
    if len(payload) < 8 or payload[:4] != _MAGIC:
        raise PayloadError("not a pocketlearn update payload (bad magic bytes); is the client the same version?")
    (size,) = struct.unpack("<I", payload[4:8])
    try:
        entries = json.loads(payload[8:8 + size])
    except ValueError as err:
        raise PayloadError(f"update payload header is corrupt: {err}") from None
    offset, out = 8 + size, {}
    for name, shape in entries:
        count = int(np.prod(shape)) if shape else 1
        end = offset + 4 * count
        if end > len(payload):
            raise PayloadError(f"update payload is truncated inside tensor {name!r} (shape {shape})")
        out[name] = torch.from_numpy(np.frombuffer(payload, "<f4", count, offset).copy()).reshape(shape)
        offset = end
    if offset != len(payload):
        raise PayloadError(f"update payload has {len(payload) - offset} unexpected trailing bytes")
    return out
