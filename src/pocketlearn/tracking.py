"""Run metrics as TensorBoard event files (``--tensorboard DIR``, ``[tracking]``), where Flower's and pfl's users look.

A federated run writes every numeric value of its ``metrics.jsonl`` line at step = round, under the line's own
key (``test_accuracy``, ``bytes_up``, ...); ``pocketlearn train`` writes ``train_loss`` per step and the test
metrics before and after training. A resumed run opens its writer with ``purge_step`` = its first new step, so
TensorBoard hides whatever a killed run logged past its checkpoint and shows each step once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pocketlearn.errors import ConfigError


def require_tensorboard() -> type:
    """``SummaryWriter``, or a :class:`ConfigError` saying how to install the package it needs."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it; its own error names no command)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tracking to TensorBoard needs the tensorboard package, which is not installed: run "
                          "`pip install 'pocketlearn[tracking]'`, or leave out --tensorboard and the config's "
                          "tracking.tensorboard") from None
    return SummaryWriter


def scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of ``record`` by tag; nested dicts become ``outer/inner`` tags, the rest is left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class ScalarLog:
    """Scalars to a TensorBoard log folder; the writer opens on the first value, so an idle run leaves no file."""

    def __init__(self, log_dir: str | Path, *, flush_each: bool = True):
        self.log_dir = Path(log_dir)
        self._writer_class = require_tensorboard()  # before any training: a missing package fails the start
        self._writer: Any = None
        self.flush_each = flush_each  # rounds are slow and watched live; steps are many and fast

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        """Log every numeric value of ``values`` at ``step`` (NaN and inf kept, as TensorBoard shows them)."""
        if self._writer is None:
            # events at or after this step from an earlier, killed process are hidden: each step shows once
            self._writer = self._writer_class(str(self.log_dir), purge_step=step)
        for tag, value in scalars(values).items():
            self._writer.add_scalar(tag, value, global_step=step)
        if self.flush_each:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def round_values(record: Any) -> dict[str, float]:
    """A round's scalars: its ``metrics.jsonl`` line, less the round number (the step)."""
    values = scalars(record.to_json())
    values.pop("round", None)
    return values
