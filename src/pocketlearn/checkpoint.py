"""Atomic checkpoints: a file is either the old complete state or the new complete state, never half of one."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pocketlearn.errors import PocketlearnError

FORMAT_VERSION = 1


class CheckpointError(PocketlearnError):
    """A checkpoint is unreadable, from another format version, or for another model."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    write_atomic(path, buffer.getbuffer())


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged one is a clear error."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); "
                              "delete it to start over, or restore it from a backup") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {path} has format version {found}, this pocketlearn reads "
                              f"{FORMAT_VERSION}; delete it to start over")
    return state


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint's ``"model"`` state dict into ``model``; a missing file or other model is a clear error."""
    if not Path(path).exists():
        raise CheckpointError(f"no weights at {path}; check model.init, or create them first (e.g. by pretraining)")
    weights = load_checkpoint(path).get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {path} holds no 'model' state dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {path} do not fit the model: {str(err).splitlines()[0]} "
                              "(is model.init for another model?)") from None
