"""One device's update loop.

Predict, watch the stream of its own errors with a drift detector, and when it fires fine-tune a
copy of the model on a recent labelled window, under the device's memory budget; keep the copy only if it is
better on held-out recent traffic, and swap it in atomically (checkpoint file first, then the live reference).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocketlearn.apps.ids.model import accuracy
from pocketlearn.checkpoint import save_checkpoint
from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, ConfigError, Validated

DETECTORS = ("adwin", "page-hinkley")


@dataclass(frozen=True)
class LearnerConfig(Validated):
    """On-device update policy. ``holdout_every``: every k-th row of the window is held out for the swap test."""

    detector: str = "adwin"
    method: str = "backprop"
    method_options: dict[str, Any] = field(default_factory=lambda: {"lr": 0.05, "optimizer": "sgd", "momentum": 0.9})
    window: int = 200
    min_window: int = 60
    holdout_every: int = 4
    epochs: int = 15
    batch_size: int = 32
    cooldown: int = 40
    retries: int = 2  # after an alarm whose update lost, try again every ``cooldown`` rows (the window fills up)
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.detector not in DETECTORS:
            out.append(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.min_window < 2 * self.holdout_every or self.window < self.min_window:
            out.append("need window >= min_window >= 2 * holdout_every")
        if self.holdout_every < 2 or self.epochs < 1 or self.batch_size < 1 or self.cooldown < 0:
            out.append("holdout_every >= 2, epochs >= 1, batch_size >= 1 and cooldown >= 0 are required")
        return out


def make_detector(name: str) -> Any:
    """A river drift detector over the 0/1 error stream (thresholds tuned for error-rate jumps of ~0.2+)."""
    from river import drift

    if name == "adwin":
        return drift.ADWIN(delta=0.002, clock=8)
    if name == "page-hinkley":
        return drift.PageHinkley(min_instances=30, delta=0.02, threshold=8.0, alpha=0.999)
    raise ConfigError(f"unknown detector {name!r}; choose one of {DETECTORS}")


@dataclass
class UpdateRecord:
    """What one fine-tuning attempt did: where, how much memory, and whether it replaced the model."""

    position: int
    peak_bytes: int
    old_accuracy: float
    new_accuracy: float
    swapped: bool


def check_budget(method: Any, batch: tuple[torch.Tensor, torch.Tensor], device: DeviceProfile) -> int:
    """Estimated peak bytes of one step; a BudgetError naming the device and the way out when it does not fit."""
    from pocketlearn.memory import estimate

    peak = estimate(method, batch).total
    if peak > device.memory_budget_bytes:
        raise BudgetError(f"{method.name} on batch {len(batch[1])} needs ~{format_bytes(peak)}, device "
                          f"{device.name} allows {format_bytes(device.memory_budget_bytes)}; use a smaller batch "
                          "size, a cheaper method (bias, sparse) or a larger device")
    return peak


def fine_tune(model: nn.Module, x: np.ndarray, y: np.ndarray, config: LearnerConfig, device: DeviceProfile
              ) -> tuple[nn.Module, int]:
    """A trained copy of ``model`` (the live one is untouched) and the estimated peak bytes of a step."""
    from pocketlearn.methods import make_method

    candidate = copy.deepcopy(model)
    method = make_method(config.method, candidate, **config.method_options)
    xs, ys = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y)
    peak = check_budget(method, (xs[:config.batch_size], ys[:config.batch_size]), device)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        for batch in torch.randperm(len(ys), generator=gen).split(config.batch_size):
            method.step((xs[batch], ys[batch]))
    return method.model.eval(), peak


class DeviceLearner:
    """The on-device loop for one stream. ``update=False`` gives the frozen baseline with the same bookkeeping."""

    def __init__(self, model: nn.Module, config: LearnerConfig, device: DeviceProfile, *,
                 checkpoint: str | Path | None = None, update: bool = True):
        self.model, self.config, self.device, self.update = model.eval(), config, device, update
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.detector = make_detector(config.detector)
        self.recent_x: deque[np.ndarray] = deque(maxlen=config.window)
        self.recent_y: deque[int] = deque(maxlen=config.window)
        self.position = 0
        self.last_attempt = -config.cooldown
        self.detections: list[int] = []
        self.updates: list[UpdateRecord] = []
        self.pending = 0
        self.samples_learned = 0  # rows behind accepted updates since the last federated sync

    def observe(self, x: np.ndarray, y: int) -> bool:
        """Test-then-train on one labelled connection; returns whether the prediction was right."""
        with torch.no_grad():
            pred = int(self.model(torch.from_numpy(x[None].astype(np.float32))).argmax(1))
        correct = pred == y
        self.detector.update(0.0 if correct else 1.0)
        self.recent_x.append(x)
        self.recent_y.append(int(y))
        if self.detector.drift_detected:
            self.detections.append(self.position)
            self.pending = 1 + self.config.retries
        if self.update and self.pending and len(self.recent_y) >= self.config.min_window \
                and self.position - self.last_attempt >= self.config.cooldown:
            self.pending -= 1
            if self.retrain().swapped:
                self.pending = 0
        self.position += 1
        return correct

    def window_split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train x, train y, held-out x, held-out y) from the recent window; every k-th row is held out."""
        x, y = np.stack(self.recent_x), np.asarray(self.recent_y, dtype=np.int64)
        held = np.zeros(len(y), bool)
        held[len(y) - 1::-self.config.holdout_every] = True  # newest row first, so the held-out part is recent
        return x[~held], y[~held], x[held], y[held]

    def retrain(self) -> UpdateRecord:
        """Fine-tune on the recent window and swap the result in only if it beats the live model on held-out."""
        self.last_attempt = self.position
        tx, ty, hx, hy = self.window_split()
        candidate, peak = fine_tune(self.model, tx, ty, self.config, self.device)
        record = UpdateRecord(self.position, peak, accuracy(self.model, hx, hy), accuracy(candidate, hx, hy), False)
        if record.new_accuracy > record.old_accuracy:
            self.swap(candidate)
            record.swapped = True
            self.samples_learned += len(ty)
        self.updates.append(record)
        return record

    def offer(self, candidate: nn.Module) -> bool:
        """Adopt a model from elsewhere (the federated average) unless it is worse on held-out recent traffic."""
        if len(self.recent_y) < 2 * self.config.holdout_every:
            self.swap(candidate)
            return True
        _, _, hx, hy = self.window_split()
        if accuracy(candidate, hx, hy) >= accuracy(self.model, hx, hy):
            self.swap(candidate)
            return True
        return False

    def swap(self, candidate: nn.Module) -> None:
        """Write the new model file atomically, then replace the live reference (one assignment)."""
        candidate = candidate.eval()
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, {"model": candidate.state_dict(), "position": self.position})
        self.model = candidate
