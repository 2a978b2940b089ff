"""Measured peak memory of one training step per (model, method, batch), and whether it fits a device.

Measured once per (model, method, batch) in a fresh process and reused across users: the step's peak does
not depend on whose windows are in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import UnsupportedModelError

MeasureFn = Callable[[str, str, int, dict[str, Any]], int]  # (model, method, batch, options) -> peak bytes


@dataclass(frozen=True)
class Fit:
    """Whether a (model, method) training step fits a device; ``needed_bytes`` is the measured peak."""

    model: str
    method: str
    device: str
    budget_bytes: int
    needed_bytes: int | None  # None: the method cannot be applied to the model
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.needed_bytes is not None and self.needed_bytes <= self.budget_bytes

    def describe(self) -> str:
        if self.needed_bytes is None:
            return f"not applicable ({self.note})"
        if self.fits:
            return f"fits ({format_bytes(self.needed_bytes)} of {format_bytes(self.budget_bytes)})"
        return (f"does not fit: needs {format_bytes(self.needed_bytes)} ({self.needed_bytes} bytes) > "
                f"{format_bytes(self.budget_bytes)}")


def measure_peak(model: str, method: str, batch: int, options: dict[str, Any]) -> int:
    """Peak bytes of a training step (or ``"inference"``), measured in a fresh process on one thread."""
    from pocketlearn.apps.har.models import IN_FEATURES, NUM_CLASSES, har_model
    from pocketlearn.memory import measure

    g = torch.Generator().manual_seed(0)
    example = (torch.randn(batch, 6, IN_FEATURES // 6, generator=g), torch.randint(0, NUM_CLASSES, (batch,),
                                                                                  generator=g))
    return measure(har_model(model), method, example, options=options, steps=2, threads=1).peak_bytes


class PeakCache:
    """Peaks by (model, method, batch): each measured once, then reused for every user and device."""

    def __init__(self, measure_fn: MeasureFn = measure_peak):
        self.measure_fn = measure_fn
        self.peaks: dict[tuple[str, str, int], int | None] = {}
        self.notes: dict[tuple[str, str, int], str] = {}

    def peak(self, model: str, method: str, batch: int, options: dict[str, Any]) -> int | None:
        key = (model, method, batch)
        if key not in self.peaks:
            from pocketlearn.apps.har.models import har_model
            from pocketlearn.methods import make_method

            try:  # cheap in-process check first: the child would only report it as a traceback
                if method != "inference":
                    make_method(method, har_model(model)(), **options)
            except UnsupportedModelError as err:
                self.peaks[key], self.notes[key] = None, str(err).split(";")[0]
                return None
            self.peaks[key] = self.measure_fn(model, method, batch, options)
        return self.peaks[key]

    def fit(self, model: str, method: str, batch: int, options: dict[str, Any], device: DeviceProfile) -> Fit:
        needed = self.peak(model, method, batch, options)
        return Fit(model, method, device.name, device.memory_budget_bytes, needed,
                   self.notes.get((model, method, batch), ""))
