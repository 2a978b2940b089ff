"""Atomic, verified checkpoints: a file is the old complete state or the new one, and damage is named as such.

Layout (format 2): the ``torch.save`` bytes, then a 52-byte trailer: magic, format version, payload length and
the payload's sha256. The digest is checked before ``torch.load`` sees a byte, so a flipped bit is "corrupt",
never a silently changed weight or a misleading "different config". The trailer sits after the zip archive
``torch.save`` writes, so ``torch.load(path)`` still opens the file for inspection (it ignores trailing bytes),
while :func:`load_checkpoint` reads and checks it.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from pocketlearn.errors import PocketlearnError

FORMAT_VERSION = 2
MAGIC = b"PLCHKPT\x00"
_TRAILER = struct.Struct("<8sIQ32s")  # magic, format version, payload length, sha256(payload)
_ZIP_END = b"PK\x05\x06"  # a zip archive's end record: how format 1 (bare torch.save) files end
DEFAULT_REMEDY = "restore it from a backup, or delete it to start over"


class CheckpointError(PocketlearnError):
    """A checkpoint is unreadable, corrupt, from another format version, or for another model or run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename), with its digest."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    payload = buffer.getbuffer()
    trailer = _TRAILER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    write_atomic(path, bytes(payload) + trailer)


def write_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_format(path: str | Path) -> int | None:
    """The format version a checkpoint file declares (1: a bare ``torch.save`` file), None if it is neither.

    Reads only the file's last bytes: cheap enough to decide whether a cached file must be rebuilt.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        if size >= _TRAILER.size:
            f.seek(size - _TRAILER.size)
            magic, version, _, _ = _TRAILER.unpack(f.read(_TRAILER.size))
            if magic == MAGIC:
                return int(version)
        if size >= 22:
            f.seek(size - 22)
            if f.read(4) == _ZIP_END:
                return 1
    return None


def load_checkpoint(path: str | Path, *, remedy: str = DEFAULT_REMEDY, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verified against its digest before it is unpickled.

    ``remedy``: the way out an error names when the file is corrupt (callers know what deleting it means).
    ``mmap``: the tensors stay backed by the file (pages are read when used; the digest is checked by
    streaming the file, so no copy of it is held). A missing file raises :class:`FileNotFoundError`;
    anything else wrong is a :class:`CheckpointError`.
    """
    path = Path(path)
    source: Any = path if mmap else None
    if mmap:
        _verify_streaming(path, remedy)
    else:
        source = io.BytesIO(_verified_payload(path, remedy))
    try:
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(err).__name__} while unpickling it); "
                              f"{remedy}") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {path} has format version {found}, this pocketlearn reads "
                              f"{FORMAT_VERSION}; {remedy}")
    return state


def _verified_payload(path: Path, remedy: str) -> bytes:
    """The ``torch.save`` bytes of ``path`` after checking the trailer, the file's size and the digest."""
    length, digest = _trailer(path, remedy)
    with path.open("rb") as f:
        payload = f.read(length)
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(_digest_mismatch(path, remedy))
    return payload


def _verify_streaming(path: Path, remedy: str) -> None:
    length, digest = _trailer(path, remedy)
    h, left = hashlib.sha256(), length
    with path.open("rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    if h.digest() != digest:
        raise CheckpointError(_digest_mismatch(path, remedy))


def _digest_mismatch(path: Path, remedy: str) -> str:
    return (f"checkpoint {path} is corrupt: its contents do not match the sha256 digest stored with them (a changed "
            f"byte on disk or in a copy); {remedy}")


def _trailer(path: Path, remedy: str) -> tuple[int, bytes]:
    """The payload length and sha256 the trailer declares, after checking the format and the file's size."""
    size = path.stat().st_size
    declared = checkpoint_format(path)
    if declared is None:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({size} bytes, no pocketlearn checkpoint "
                              f"trailer at its end); {remedy}")
    if declared == 1 and _inner_version(path) == FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: its digest trailer is missing; {remedy}")
    if declared != FORMAT_VERSION:
        origin = "an older pocketlearn, without a digest" if declared < FORMAT_VERSION else \
            "a newer pocketlearn, or damaged"
        raise CheckpointError(f"checkpoint {path} has format version {declared} ({origin}); this pocketlearn reads "
                              f"format {FORMAT_VERSION}. Delete it to start over (a cache is rebuilt), or write it "
                              "again with this version")
    with path.open("rb") as f:
        f.seek(size - _TRAILER.size)
        _, _, length, digest = _TRAILER.unpack(f.read(_TRAILER.size))
    if length != size - _TRAILER.size:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {size} bytes, its trailer declares "
                              f"{length + _TRAILER.size}; {remedy}")
    return length, digest


def _inner_version(path: Path) -> object:
    """The ``format_version`` inside a bare ``torch.save`` file, None if unreadable.

    Tells a format-1 file from a format-2 one that lost its trailer.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return state.get("format_version") if isinstance(state, dict) else None


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's ``"model"`` state dict into ``model``; a missing file or other model is a clear error.

    Returns the whole checkpoint: its other keys say how the weights were made.
    """
    if not Path(path).exists():
        raise CheckpointError(f"no weights at {path}; check model.init, or create them first (e.g. by pretraining)")
    checkpoint = load_checkpoint(path, remedy="restore it from a backup, or delete it and create it again "
                                              "(e.g. by pretraining)")
    weights = checkpoint.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path} holds no 'model' state dict")
    load_model_state(model, weights, what=f"weights in {path}",
                     remedy="is model.init (or --init) for another model or method?")
    return checkpoint


def load_model_state(model: torch.nn.Module, state: dict[str, Any], *, what: str, remedy: str) -> None:
    """``model.load_state_dict(state)``; a state of another shape is a :class:`CheckpointError` naming what differs.

    torch's own error lists every tensor; ours says the cause a user can act on (a LoRA rank, say) and ``remedy``.
    """
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{what} do not fit this model: {problem}; {remedy}")
    model.load_state_dict(state)


def state_mismatch(own: dict[str, Any], state: dict[str, Any]) -> str | None:
    """What keeps ``state`` from loading into a model whose state dict is ``own`` (None: it loads)."""
    old, new = _lora_ranks(state), _lora_ranks(own)
    if old and new and old != new:
        return (f"they were written with LoRA rank {_listed(old)}, this model has rank {_listed(new)} (train or "
                f"export with -o rank={min(old)} to use them)")
    problems = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}")
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) of other shapes (saved vs this model), e.g. {'; '.join(shapes[:3])}")
    return "; ".join(problems) or None


def _lora_ranks(state: dict[str, Any]) -> set[int]:
    """The ranks of a LoRA model's adapters (PEFT's ``lora_A`` weights are rank x in_features); empty if none."""
    return {int(v.shape[0]) for k, v in state.items() if "lora_A" in k and k.endswith(".weight") and v.dim() == 2}


def _listed(values: set[int]) -> str:
    return ", ".join(str(v) for v in sorted(values))
