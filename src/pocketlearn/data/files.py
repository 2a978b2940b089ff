"""A device's own examples as one file: what `fed join --data` and `device-train --data` read.

A plain checkpoint (atomic write, tensors only, read back with ``weights_only``) holding ``x``, ``y`` and a small
``meta`` dict (which client it is, which data set it came from), so a device needs nothing but this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from pocketlearn.checkpoint import load_checkpoint, save_checkpoint
from pocketlearn.errors import DataError


def save_examples(path: str | Path, x: Tensor, y: Tensor, **meta: Any) -> None:
    """Write (x, y) and JSON-like ``meta`` to ``path`` atomically."""
    if len(x) != len(y):
        raise DataError(f"{len(x)} inputs but {len(y)} labels; give one label per example")
    save_checkpoint(path, {"kind": "examples", "x": x.contiguous(), "y": y.contiguous(), "meta": dict(meta)})


def load_examples(path: str | Path) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """(x, y, meta) from a file written by :func:`save_examples`; anything else is a clear error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no data file at {path}; write one per client with `pocketlearn fed partition CONFIG "
                        "--out DIR`, or with pocketlearn.data.files.save_examples")
    state = load_checkpoint(path)
    if state.get("kind") != "examples":
        raise DataError(f"{path} is not an examples file (it holds {sorted(state)}); write one with "
                          "pocketlearn.data.files.save_examples")
    return state["x"], state["y"], dict(state.get("meta", {}))
