"""The wire format of every payload: magic, version, header length, CRC-32, a JSON header, raw array bytes.

``PLF | version (1 B) | header length (4 B, little-endian) | CRC-32 (4 B) | header | bodies``. The CRC-32 covers
every byte but itself and is checked before the header is parsed: it catches corruption (bit flips, truncation,
spliced bytes), not forgery, since anyone can recompute it; authenticity is the transport's job (TLS, node auth).

A decoder trusts nothing: a truncated, corrupted, foreign or other-version payload, or a header whose schema is
off, raises :class:`PayloadError` with what is wrong, before anything is allocated beyond the payload's own size.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketlearn.errors import PocketlearnError

MAGIC = b"PLF"
VERSION = 2  # 2: CRC-32 after the header length
_PREFIX = struct.Struct("<BI")  # version, header length
_CRC = struct.Struct("<I")
HEAD = len(MAGIC) + _PREFIX.size + _CRC.size  # bytes before the JSON header
_DTYPES = {"f4": "<f4", "f2": "<f2", "u1": "u1", "i4": "<i4", "u2": "<u2", "i8": "<i8"}  # bf16 travels as u2
MAX_NDIM = 32
_MAX_EXTENT = 1 << 40  # product of a shape's non-zero dimensions: numpy refuses shapes past its address space


class PayloadError(PocketlearnError):
    """A client or server message that cannot be decoded (truncated, corrupted, wrong version, not ours)."""


@dataclass
class Frame:
    """What a codec stage produces and the next consumes: named arrays plus small metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def checksum(payload: bytes | bytearray | np.ndarray) -> int:
    """CRC-32 of every byte of a payload but its checksum field."""
    view = _view(payload)
    return zlib.crc32(view[HEAD:], zlib.crc32(view[:HEAD - _CRC.size]))


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
    out = bytearray(MAGIC + _PREFIX.pack(VERSION, len(header)) + bytes(_CRC.size) + header + b"".join(bodies))
    seal(out)
    return bytes(out)


def seal(payload: bytearray | np.ndarray) -> None:
    """Write a finished payload's CRC-32 into its checksum field, in place."""
    _CRC.pack_into(_view(payload), HEAD - _CRC.size, checksum(payload))


def _view(payload: bytes | bytearray | np.ndarray) -> memoryview:
    return payload.data if isinstance(payload, np.ndarray) else memoryview(payload)


def unpack(payload: bytes | memoryview) -> tuple[list[str], Frame]:
    """(codec chain, frame) of a payload, every field checked: any bytes give these or a PayloadError."""
    payload = bytes(payload)
    size = _check_prefix(payload)
    header = _parse_header(payload[HEAD:HEAD + size])
    offset, arrays = HEAD + size, dict[str, np.ndarray]()
    for entry in header["arrays"]:
        name, kind, shape, nbytes = _array_entry(entry, arrays)
        dtype = np.dtype(_DTYPES[kind])
        if nbytes != _count(shape) * dtype.itemsize or offset + nbytes > len(payload):
            raise PayloadError(f"payload array {name!r} ({kind}, shape {shape}, {nbytes} bytes) is truncated or "
                               "mis-sized")
        arrays[name] = np.frombuffer(payload, dtype, nbytes // dtype.itemsize, offset).reshape(shape).copy()
        offset += nbytes
    if offset != len(payload):
        raise PayloadError(f"payload has {len(payload) - offset} unexpected trailing bytes")
    return header["chain"], Frame(arrays, header["meta"])


def _check_prefix(payload: bytes) -> int:
    """The header's length, once magic, version, checksum and length are right."""
    if len(payload) < len(MAGIC) + 1 or payload[:3] != MAGIC:
        raise PayloadError("not a pocketlearn payload (bad magic bytes): a foreign or corrupted message")
    if payload[3] != VERSION:
        raise PayloadError(f"payload format version {payload[3]}, this pocketlearn reads {VERSION}: update the "
                           "older side")
    if len(payload) < HEAD:
        raise PayloadError(f"payload truncated inside its prefix ({len(payload)} bytes, need {HEAD})")
    (stored,) = _CRC.unpack_from(payload, HEAD - _CRC.size)
    if stored != checksum(payload):
        raise PayloadError(f"payload checksum mismatch (CRC-32 {checksum(payload):#010x}, stored {stored:#010x}): "
                           "corrupted or truncated in transit")
    (_, size) = _PREFIX.unpack_from(payload, len(MAGIC))
    if HEAD + size > len(payload):
        raise PayloadError(f"payload truncated inside its header ({len(payload)} bytes, header needs {HEAD + size})")
    return int(size)


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name}")


def _parse_header(raw: bytes) -> dict[str, Any]:
    """The JSON header, its schema checked: ``chain`` a list of strings, ``arrays`` a list, ``meta`` a dict."""
    try:
        header = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PayloadError(f"payload header is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(header, dict) or set(header) != {"chain", "arrays", "meta"}:
        raise PayloadError(f"payload header must be an object with keys chain, arrays, meta; got {_short(header)}")
    chain, arrays, meta = header["chain"], header["arrays"], header["meta"]
    if not isinstance(chain, list) or not all(isinstance(s, str) for s in chain):
        raise PayloadError(f"payload header's chain must be a list of stage names, got {_short(chain)}")
    if not isinstance(arrays, list):
        raise PayloadError(f"payload header's arrays must be a list, got {_short(arrays)}")
    if not isinstance(meta, dict):
        raise PayloadError(f"payload header's meta must be an object, got {_short(meta)}")
    return header


def _array_entry(entry: Any, seen: dict[str, np.ndarray]) -> tuple[str, str, list[int], int]:
    """``[name, kind, shape, nbytes]`` of one listed array, each field of the right type and range."""
    if not isinstance(entry, list) or len(entry) != 4:
        raise PayloadError(f"payload header lists a malformed array {_short(entry)}: want [name, kind, shape, bytes]")
    name, kind, shape, nbytes = entry
    if not isinstance(name, str) or name in seen:
        raise PayloadError(f"payload header lists an array with a bad or repeated name {_short(name)}")
    if not isinstance(kind, str) or kind not in _DTYPES:
        raise PayloadError(f"payload array {name!r} has unknown type {_short(kind)}; known: {sorted(_DTYPES)}")
    shape = check_shape(shape, f"payload array {name!r}")
    if not _is_int(nbytes) or nbytes < 0:
        raise PayloadError(f"payload array {name!r} declares {_short(nbytes)} bytes")
    return name, kind, shape, nbytes


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_shape(shape: Any, what: str) -> list[int]:
    """``shape`` if it is a list of at most MAX_NDIM non-negative ints, else a PayloadError about ``what``."""
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape) \
            or _count([d or 1 for d in shape]) > _MAX_EXTENT:
        raise PayloadError(f"{what} has an invalid shape {_short(shape)}: want a list of at most {MAX_NDIM} "
                           f"non-negative integers whose non-zero ones multiply to at most {_MAX_EXTENT}")
    return shape


def _count(shape: list[int]) -> int:
    """Entries in ``shape``, in exact integer arithmetic (a forged 2**64 cannot wrap around)."""
    count = 1
    for d in shape:
        count *= d
    return count


def count_of(shape: Any, what: str, limit: int) -> int:
    """Entries in a declared ``shape``, refused when above ``limit``: checked before anything is allocated."""
    count = _count(check_shape(shape, what))
    if count > limit:
        raise PayloadError(f"{what} declares shape {_short(shape)} ({count} values), more than the {limit} this "
                           "payload may decode to (the model's size, or the payload's length times the codec's "
                           "expansion)")
    return count


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
