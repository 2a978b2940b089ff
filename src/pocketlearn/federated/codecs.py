"""How an update travels: serialized to bytes, so every byte counted is a byte that would cross the network."""

from __future__ import annotations

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
    header = json.dumps([[n, list(shapes[n])] for n in sorted(shapes)]).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header


def encode_dense(tensors: dict[str, Tensor]) -> bytes:
    """Float32 tensors by name: a JSON header (names, shapes) and the raw little-endian values."""
    names = sorted(tensors)
    body = b"".join(tensors[n].detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
                    for n in names)
    return _header({n: tuple(tensors[n].shape) for n in names}) + body


def encode_dense_rows(stacked: dict[str, Tensor]) -> list[bytes]:
    """``encode_dense`` of each client's row of K-stacked tensors (K, *shape), the header built once."""
    names = sorted(stacked)
    header = _header({n: tuple(stacked[n].shape[1:]) for n in names})
    k = len(stacked[names[0]])
    flat = torch.cat([stacked[n].detach().to(torch.float32).reshape(k, -1) for n in names], 1).numpy()
    flat = flat.astype("<f4", copy=False)
    return [header + row.tobytes() for row in flat]


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
