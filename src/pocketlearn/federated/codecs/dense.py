"""Uncompressed float32 payloads, with a fast path that writes K clients' payloads into one buffer."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from pocketlearn.federated.codecs.format import Frame, pack, seal


def encode_dense(tensors: dict[str, Tensor]) -> bytes:
    """Float32 tensors by name in the wire format (no codec stages)."""
    return pack(Frame({n: tensors[n].detach().to(torch.float32).contiguous().numpy() for n in sorted(tensors)}), [])


def decode_dense(payload: bytes | memoryview, expected: dict[str, torch.Size] | None = None) -> dict[str, Tensor]:
    """What ``encode_dense`` wrote: the uncompressed codec's decode, so any other bytes raise PayloadError."""
    from pocketlearn.federated.codecs import Codec

    return Codec().decode(payload, expected)


@functools.lru_cache(maxsize=16)
def _header(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> np.ndarray:
    """The bytes before the values in a dense payload of these tensors (the same for every client)."""
    empty = pack(Frame({n: np.zeros(shape, np.float32) for n, shape in shapes}), [])
    values = 4 * sum(int(np.prod(shape, dtype=np.int64)) for _, shape in shapes)
    return np.frombuffer(empty[: len(empty) - values], np.uint8)


def encode_dense_rows(stacked: dict[str, Tensor], out: np.ndarray | None = None) -> np.ndarray:
    """``encode_dense`` of each client's row of K-stacked tensors (K, *shape), as rows of one (K, L) byte array.

    Row k holds exactly the bytes ``encode_dense`` gives for client k; writing all K into one buffer (``out``,
    reused across rounds when its shape fits) saves K allocations of fresh pages.
    """
    names = sorted(stacked)
    k = len(stacked[names[0]])
    sizes = [4 * stacked[n][0].numel() for n in names]
    header = _header(tuple((n, tuple(stacked[n].shape[1:])) for n in names))
    width = len(header) + sum(sizes)
    if out is None or out.shape != (k, width):
        out = np.empty((k, width), np.uint8)
    out[:, : len(header)] = header
    offset = len(header)
    for n, size in zip(names, sizes, strict=True):  # each tensor's rows straight into its columns, one copy
        values = stacked[n].detach().to(torch.float32).reshape(k, -1).numpy().astype("<f4", copy=False)
        out[:, offset:offset + size] = values.view(np.uint8)
        offset += size
    for row in out:  # each row's own CRC-32, as pack writes it
        seal(row)
    return out
