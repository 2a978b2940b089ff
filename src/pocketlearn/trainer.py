"""The on-device loop: a budget guard before the first step, atomic checkpoints, and resume.

A run killed at any point resumes from its last checkpoint and ends with the same weights as a run that
was never interrupted: the data order of each epoch comes from (seed, epoch), the checkpoint holds the
model, the method's optimizer state and the position in the epoch. It also holds the run's settings
(method and options, batch size, seed, epochs, a digest of the data, and the caller's own such as the model
name): a checkpoint of other settings is refused by name, unless ``resume_anyway``. More epochs than the
checkpoint's run asked for is a continuation (the first epochs are the same either way) and is allowed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pocketlearn.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, Validated
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.methods.base import Batch, TrainingMethod


@dataclass(frozen=True)
class TrainerConfig(Validated):
    epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    checkpoint_every: int = 50  # steps between checkpoints (and one at the end of every epoch)

    def problems(self) -> list[str]:
        return [f"{k} should be >= 1, got {v}" for k, v in
                (("epochs", self.epochs), ("batch_size", self.batch_size),
                 ("checkpoint_every", self.checkpoint_every)) if v < 1]


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    notes: list[str] = field(default_factory=list)  # how a resume differed from a plain continuation


class LocalTrainer:
    """Trains a prepared :class:`TrainingMethod` on local tensors within a device's memory budget."""

    def __init__(self, method: TrainingMethod, config: TrainerConfig | None = None, *,
                 device: DeviceProfile | None = None, checkpoint_path: str | Path | None = None,
                 settings: Mapping[str, Any] | None = None, resume_anyway: bool = False):
        """A trainer that checkpoints to ``checkpoint_path`` (when given) and resumes from it.

        ``settings``: what else identifies the run (model and data names, ...), recorded in the checkpoint and
        checked on resume like the trainer's own; ``resume_anyway``: resume a checkpoint of other settings.
        """
        self.method = method
        self.config = config or TrainerConfig()
        self.device = device
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.settings = dict(settings or {})
        self.resume_anyway = resume_anyway
        self._restored: tuple[int, list[str]] | None = None  # (step, notes) once the checkpoint was looked at

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
        start = self.restore(x, y)
        notes = list(self._restored[1]) if self._restored else []
        result = TrainResult(steps=start, resumed_from_step=start, notes=notes)
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

    def restore(self, x: Tensor, y: Tensor) -> int:
        """Load the checkpoint, if any, into the method: the step the run continues from (0 for a new run).

        :meth:`fit` does it when the caller did not; a caller does it first to evaluate or report the weights
        the run starts from. A step equal to ``total_steps(len(x))`` means the checkpoint's run is complete.
        """
        if self._restored is None:
            notes: list[str] = []
            self._run_settings = self.run_settings(x, y) if self.checkpoint_path else {}
            self._restored = (self._resume(self._run_settings, self.total_steps(len(x)), notes), notes)
        return self._restored[0]

    def total_steps(self, n: int) -> int:
        return self.config.epochs * -(-n // self.config.batch_size)

    def run_settings(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """What a checkpoint of this run records and a resume must match (JSON values)."""
        cfg = self.config
        own = {"method": self.method.name, "options": asdict(self.method.config), "batch_size": cfg.batch_size,
               "seed": cfg.seed, "epochs": cfg.epochs, "examples": len(x), "data_sha256": data_digest(x, y)}
        return json.loads(json.dumps({**own, **self.settings}, sort_keys=True, default=str))

    def _save(self, step: int) -> None:
        if self.checkpoint_path is None:
            return
        save_checkpoint(self.checkpoint_path, {
            "step": step, "method": self.method.name, "model": self.method.model.state_dict(),
            "method_state": self.method.state_dict(), "rng": torch.get_rng_state(),
            "settings": json.dumps(self._run_settings, sort_keys=True)})

    def _resume(self, settings: dict[str, Any], total_steps: int, notes: list[str]) -> int:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return 0
        state: dict[str, Any] = load_checkpoint(path, remedy="restore it from a backup, or delete it (or pass "
                                                "another checkpoint path) to train from step 0")
        if state.get("method") != self.method.name:
            raise CheckpointError(f"checkpoint {path} was written by method {state.get('method')!r}, "
                                  f"not {self.method.name!r}; use that method or another checkpoint path")
        differing = _differences(json.loads(state.get("settings", "{}")), settings)
        longer = differing.get("epochs")
        if longer is not None and isinstance(longer[0], int) and longer[1] > longer[0]:
            del differing["epochs"]  # train longer: the first epochs are those of the checkpoint's run
            notes.append(f"continuing the checkpoint's {longer[0]}-epoch run to {longer[1]} epochs")
        if differing and not self.resume_anyway:
            raise CheckpointError(f"checkpoint {path} was written with other settings: {_describe(differing)}. "
                                  "Resume with the checkpoint's settings, pass another checkpoint path to start a "
                                  "new run, or pass --resume-anyway (resume_anyway=True) to continue from its "
                                  "weights under the new settings")
        step = int(state["step"])
        if step > total_steps:
            raise CheckpointError(f"checkpoint {path} is at step {step}, past the {total_steps} steps this run asks "
                                  "for; ask for more epochs, or pass another checkpoint path to start a new run")
        load_model_state(self.method.model, state["model"], what=f"the weights in checkpoint {path}",
                         remedy="pass another checkpoint path to start a new run (--resume-anyway continues under "
                                "new settings, not with weights of another shape)")
        method_state = state["method_state"]
        if "options" in differing:  # the saved optimizer would bring back the old options (torch keeps its lr)
            method_state = {"steps_done": method_state.get("steps_done", 0)}
            notes.append("method options differ: the optimizer state starts afresh with the new options")
        if differing:
            notes.append(f"resumed anyway with other settings: {_describe(differing)}")
        self.method.load_state_dict(method_state)
        torch.set_rng_state(state["rng"])
        return step


def data_digest(x: Tensor, y: Tensor) -> str:
    """A short sha256 of the training tensors (shapes, dtypes, values): tells another data set or limit apart."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _describe(differing: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in differing.items())
