"""Which training methods fit a device, measured, and which one to use.

Every method is prepared on a fresh copy of the model, estimated analytically and (by default) measured
in a fresh process; it fits when its peak (measured where available) is within the device's budget.
The recommendation is the first fitting method in :data:`QUALITY_ORDER`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, UnsupportedModelError
from pocketlearn.memory.estimate import Estimate, estimate, estimate_inference
from pocketlearn.memory.measure import Measurement, ModelFactory, measure
from pocketlearn.methods import available_methods, make_method
from pocketlearn.methods.base import Batch

# Expected final quality, best first: full fine-tuning, then the methods that train most of the model with
# true gradients, then the cheap gradient methods, then the gradient-free ones (benchmarks/methods.py).
QUALITY_ORDER = ("backprop", "lora", "sparse", "tinytl", "bias", "binary", "mezo", "pepita")


@dataclass(frozen=True)
class PlanRow:
    method: str
    supported: bool
    note: str = ""
    trainable_params: int = 0
    estimate: Estimate | None = None
    measurement: Measurement | None = None
    fits: bool = False

    @property
    def peak_bytes(self) -> int | None:
        """Measured peak where measured, else the estimate."""
        if self.measurement is not None:
            return self.measurement.peak_bytes
        return self.estimate.total if self.estimate is not None else None


@dataclass(frozen=True)
class Plan:
    device: DeviceProfile
    batch_size: int
    inference: PlanRow
    rows: tuple[PlanRow, ...]
    recommended: str

    def to_dict(self) -> dict[str, Any]:
        def row(r: PlanRow) -> dict[str, Any]:
            return {"method": r.method, "supported": r.supported, "note": r.note, "fits": r.fits,
                    "trainable_params": r.trainable_params, "peak_bytes": r.peak_bytes,
                    "estimate": r.estimate.to_dict() if r.estimate else None,
                    "measured": r.measurement.to_dict() if r.measurement else None}

        return {"device": self.device.name, "budget_bytes": self.device.memory_budget_bytes,
                "batch_size": self.batch_size, "recommended": self.recommended,
                "inference": row(self.inference), "methods": [row(r) for r in self.rows]}


def _build(model: ModelFactory) -> nn.Module:
    if isinstance(model, str):
        from pocketlearn.models import build_model

        return build_model(model)
    return model()


def _row(model: ModelFactory, method: str, batch: Batch, budget: int, options: dict[str, Any],
         do_measure: bool, steps: int) -> PlanRow:
    try:
        trainer = make_method(method, _build(model), **options)
    except UnsupportedModelError as err:
        return PlanRow(method, supported=False, note=str(err).split(";")[0])
    est = estimate(trainer, batch)
    trainable = trainer.num_trainable()
    del trainer
    measured = measure(model, method, batch, options=options, steps=steps) if do_measure else None
    peak = measured.peak_bytes if measured else est.total
    return PlanRow(method, True, "", trainable, est, measured, fits=peak <= budget)


def plan(model: ModelFactory, device: DeviceProfile, batch: Batch, *, methods: Sequence[str] | None = None,
         options: dict[str, dict[str, Any]] | None = None, measure_memory: bool = True, steps: int = 2,
         progress: Callable[[str], None] | None = None) -> Plan:
    """Estimate (and measure) every method on ``batch`` and recommend the best one that fits ``device``.

    Raises :class:`BudgetError` naming the smallest budget that would work when nothing fits.
    """
    options = options or {}
    budget = device.memory_budget_bytes
    names = list(methods) if methods else available_methods()
    rows = []
    for name in names:
        if progress:
            progress(name)
        rows.append(_row(model, name, batch, budget, options.get(name, {}), measure_memory, steps))
    net = _build(model)
    inference = PlanRow("inference", True, "", 0, estimate_inference(net, batch),
                        measure(model, "inference", batch, steps=steps) if measure_memory else None)
    del net
    fitting = [r.method for r in rows if r.fits]
    if not fitting:
        raise BudgetError(_nothing_fits(device, rows, len(batch[0])))
    best = min(fitting, key=lambda m: QUALITY_ORDER.index(m) if m in QUALITY_ORDER else len(QUALITY_ORDER))
    return Plan(device, len(batch[0]), inference, tuple(rows), best)


def _nothing_fits(device: DeviceProfile, rows: list[PlanRow], batch_size: int) -> str:
    sized = [(r.peak_bytes, r.method) for r in rows if r.peak_bytes is not None]
    if not sized:
        return f"no training method supports this model; tried {[r.method for r in rows]}"
    smallest, method = min(sized)
    return (f"no training method fits device {device.name!r} ({format_bytes(device.memory_budget_bytes)}) at "
            f"batch {batch_size}: the smallest is {method} at {format_bytes(smallest)}. A budget of "
            f"{format_bytes(smallest)} would work; or try a smaller --batch or a smaller model.")
