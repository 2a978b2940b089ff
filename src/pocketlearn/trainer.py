"""The on-device loop: a budget guard before the first step, atomic checkpoints, and resume.

A run killed at any point resumes from its last checkpoint and ends with the same weights as a run that
was never interrupted: the data order of each epoch comes from (seed, epoch), the checkpoint holds the
model, the method's optimizer state and the position in the epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pocketlearn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, ConfigError
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.methods.base import Batch, TrainingMethod


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end of every epoch)

    def __post_init__(self) -> None:
        problems = [f"{k} should be >= 1, got {v}" for k, v in
                    (("epochs", self.epochs), ("batch_size", self.batch_size),
                     ("checkpoint_every", self.checkpoint_every)) if v < 1]
        if problems:
            raise ConfigError("TrainerConfig: " + "; ".join(problems))


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0


class LocalTrainer:
    """Trains a prepared :class:`TrainingMethod` on local tensors within a device's memory budget."""

    def __init__(self, method: TrainingMethod, config: TrainerConfig | None = None, *,
                 device: DeviceProfile | None = None, checkpoint_path: str | Path | None = None):
        self.method = method
        self.config = config or TrainerConfig()
        self.device = device
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None

    def check_budget(self, batch: Batch) -> int:
        """Estimated peak of one step; raises :class:`BudgetError` when it exceeds the device's budget."""
        from pocketlearn.memory.estimate import estimate

        peak = estimate(self.method, batch).total
        if self.device is not None and peak > self.device.memory_budget_bytes:
            raise BudgetError(
                f"{self.method.name} at batch {len(batch[0])} needs about {format_bytes(peak)}; device "
                f"{self.device.name!r} allows {format_bytes(self.device.memory_budget_bytes)}. Try a smaller "
                f"batch or a cheaper method (`pocketlearn plan` lists what fits).")
        return peak

    def fit(self, x: Tensor, y: Tensor, *, eval_data: tuple[Tensor, Tensor] | None = None,
            on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        """Train for ``config.epochs`` epochs, resuming from the checkpoint if one exists."""
        cfg = self.config
        per_epoch = -(-len(x) // cfg.batch_size)
        start = self._resume()
        result = TrainResult(steps=start, resumed_from_step=start)
        self.check_budget((x[: cfg.batch_size], y[: cfg.batch_size]))
        shuffled: tuple[int, list[Batch]] = (-1, [])
        for step in range(start, cfg.epochs * per_epoch):
            epoch, index = divmod(step, per_epoch)
            if shuffled[0] != epoch:  # the order of an epoch depends on (seed, epoch) alone
                shuffled = (epoch, batches_of(x, y, cfg.batch_size, seed=cfg.seed * 100_003 + epoch))
            loss = self.method.step(shuffled[1][index])
            result.losses.append(loss)
            result.steps = step + 1
            if on_step:
                on_step(step + 1, loss)
            end_of_epoch = index == per_epoch - 1
            if end_of_epoch and eval_data is not None:
                result.evaluations.append(evaluate(self.method.model, batches_of(*eval_data, 512)))
            if end_of_epoch or (step + 1) % cfg.checkpoint_every == 0:
                self._save(step + 1)
        return result

    def total_steps(self, n: int) -> int:
        return self.config.epochs * -(-n // self.config.batch_size)

    def _save(self, step: int) -> None:
        if self.checkpoint_path is None:
            return
        save_checkpoint(self.checkpoint_path, {
            "step": step, "method": self.method.name, "model": self.method.model.state_dict(),
            "method_state": self.method.state_dict(), "rng": torch.get_rng_state()})

    def _resume(self) -> int:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return 0
        state: dict[str, Any] = load_checkpoint(self.checkpoint_path)
        if state.get("method") != self.method.name:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} was written by method {state.get('method')!r}, "
                                  f"not {self.method.name!r}; use that method or another checkpoint path")
        try:
            self.method.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} is for another model: {err}") from err
        self.method.load_state_dict(state["method_state"])
        torch.set_rng_state(state["rng"])
        return int(state["step"])
