"""The wire format of every payload: magic, version, a JSON header naming the codec chain and the arrays, raw bytes.

A decoder trusts nothing: a truncated, corrupted, foreign or other-version payload raises :class:`PayloadError`
with what is wrong, before anything touches the global model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketlearn.errors import PocketlearnError

MAGIC = b"PLF"
VERSION = 1
_DTYPES = {"f4": "<f4", "f2": "<f2", "u1": "u1", "i4": "<i4", "u2": "<u2", "i8": "<i8"}  # bf16 travels as u2


class PayloadError(PocketlearnError):
    """A client or server message that cannot be decoded (truncated, corrupted, wrong version, not ours)."""


@dataclass
class Frame:
    """What a codec stage produces and the next consumes: named arrays plus small metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def pack(frame: Frame, chain: list[str]) -> bytes:
    entries, bodies = [], []
    for name, array in frame.arrays.items():
        kind = next((k for k, v in _DTYPES.items() if np.dtype(v) == array.dtype.newbyteorder("<")
                     or np.dtype(v) == array.dtype), None)
        if kind is None:
            raise PayloadError(f"array {name!r} has dtype {array.dtype}, which the wire format does not carry")
        data = np.ascontiguousarray(array, dtype=_DTYPES[kind]).tobytes()
        entries.append([name, kind, list(array.shape), len(data)])
        bodies.append(data)
    header = json.dumps({"chain": chain, "arrays": entries, "meta": frame.meta}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<BI", VERSION, len(header)) + header + b"".join(bodies)


def unpack(payload: bytes | memoryview) -> tuple[list[str], Frame]:
    payload = bytes(payload)
    if len(payload) < 8 or payload[:3] != MAGIC:
        raise PayloadError("not a pocketlearn payload (bad magic bytes): a foreign or corrupted message")
    version, size = struct.unpack("<BI", payload[3:8])
    if version != VERSION:
        raise PayloadError(f"payload format version {version}, this pocketlearn reads {VERSION}: update the "
                           "older side")
    if 8 + size > len(payload):
        raise PayloadError(f"payload truncated inside its header ({len(payload)} bytes, header needs {8 + size})")
    try:
        header = json.loads(payload[8:8 + size])
        chain, entries, meta = header["chain"], header["arrays"], header["meta"]
    except (ValueError, KeyError, TypeError) as err:
        raise PayloadError(f"payload header is corrupt: {err}") from None
    offset, arrays = 8 + size, {}
    for entry in entries:
        try:
            name, kind, shape, nbytes = entry
            dtype = np.dtype(_DTYPES[kind])
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        except (ValueError, KeyError, TypeError) as err:
            raise PayloadError(f"payload header lists a malformed array {entry!r}: {err}") from None
        if nbytes != count * dtype.itemsize or offset + nbytes > len(payload) or min(shape, default=1) < 0:
            raise PayloadError(f"payload array {name!r} ({kind}, shape {shape}) is truncated or mis-sized")
        arrays[name] = np.frombuffer(payload, dtype, count, offset).reshape(shape).copy()
        offset += nbytes
    if offset != len(payload):
        raise PayloadError(f"payload has {len(payload) - offset} unexpected trailing bytes")
    return chain, Frame(arrays, meta)
