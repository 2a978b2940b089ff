"""Which training methods fit a device, measured, and which one to use.

Every method is prepared on a fresh copy of the model, estimated analytically and (by default) measured
in a fresh process; it fits when its peak (measured where available) is within the device's budget.
The recommendation is the first fitting method in :func:`quality_order` (an fp32 base before a quantized one).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, PocketlearnError, UnsupportedModelError
from pocketlearn.extras import MissingExtra
from pocketlearn.memory.estimate import Estimate, estimate, estimate_inference
from pocketlearn.memory.measure import Measurement, ModelFactory, measure
from pocketlearn.methods import available_methods, get_method_class, make_method
from pocketlearn.methods.base import Batch

# On a pretrained LM the frozen base can stay 4-bit (pocketlearn.quant); these rows are added for such models.
# A row "METHOD@BASE" is METHOD with these options: what `train -m METHOD -o base=q4 ...` runs.
LEAN_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora@q4": ("lora", {"base": "q4", "checkpointing": True}),
    "lora@q4-mb1": ("lora", {"base": "q4", "checkpointing": True, "micro_batch": 1}),
    "mezo@q4": ("mezo", {"base": "q4", "subset": "lora"}),
}


def variant(name: str) -> tuple[str, dict[str, Any]]:
    """The method and options of a plan row: a method name, a :data:`LEAN_VARIANTS` name or METHOD@BASE."""
    if name in LEAN_VARIANTS:
        method, options = LEAN_VARIANTS[name]
        return method, dict(options)
    method, _, base = name.partition("@")
    return method, ({"base": base} if base else {})


def train_flags(name: str) -> str:
    """The ``pocketlearn train`` flags that run a plan row."""
    method, options = variant(name)
    values = " ".join(f"-o {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
    return f"-m {method}" + (f" {values}" if values else "")


def quality_order() -> list[str]:
    """Every registered method, best expected final quality first (its class's ``quality_rank``)."""
    return sorted(available_methods(), key=lambda method: get_method_class(method).quality_rank)


def _rank(name: str) -> tuple[int, int]:
    """Quality order of a row: its method's rank, a quantized base after the fp32 one."""
    method, options = variant(name)
    return get_method_class(method).quality_rank, int(options.get("base", "fp32") != "fp32")


def default_rows(model: ModelFactory) -> list[str]:
    """Every registered method, plus the quantized-base variants for a model that can load that way."""
    names = available_methods()
    if isinstance(model, str):
        from pocketlearn.models import get_model_spec

        if get_model_spec(model).load_base is not None:
            names += list(LEAN_VARIANTS)
    return names


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


def _build(model: ModelFactory, base: str = "fp32", *, meta: bool = False) -> nn.Module:
    """The model to estimate on; with ``meta``, a named pretrained LM without its weights (instant)."""
    if isinstance(model, str):
        from pocketlearn.models import get_model_spec

        spec = get_model_spec(model)
        return spec.build_for_estimate(base) if meta else spec.build_with_base(base)
    return model()


def _like(batch: Batch, model: nn.Module) -> Batch:
    """``batch`` on the device of ``model``'s parameters (the meta device for a skeleton)."""
    device = next(model.parameters()).device
    return (batch[0].to(device), batch[1].to(device)) if device.type == "meta" else batch


def _estimated(model: ModelFactory, method: str, options: dict[str, Any], batch: Batch) -> tuple[Estimate, int]:
    """A method's estimate and trainable parameters, on the model's skeleton where that works, else on weights.

    A method that reads weight values while it prepares (a data-dependent choice) cannot run on the meta
    device; it is estimated on the real model instead.
    """
    if isinstance(model, str):
        try:
            trainer = make_method(method, _build(model, options.get("base", "fp32"), meta=True), **options)
            with _no_packed_sequences():
                return estimate(trainer, _like(batch, trainer.model)), trainer.num_trainable()
        except (NotImplementedError, RuntimeError) as err:
            if isinstance(err, PocketlearnError):
                raise
    trainer = make_method(method, _build(model, options.get("base", "fp32")), **options)
    return estimate(trainer, batch), trainer.num_trainable()


@contextmanager
def _no_packed_sequences() -> Iterator[None]:
    """Transformers looks for packed sequences in the position ids (a data-dependent test): a skeleton has none."""
    masking = sys.modules.get("transformers.masking_utils")
    find = getattr(masking, "find_packed_sequence_indices", None)
    if find is None:
        yield
        return
    masking.find_packed_sequence_indices = lambda ids: None if ids.is_meta else find(ids)  # type: ignore[union-attr]
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = find  # type: ignore[union-attr]


def _row(model: ModelFactory, name: str, batch: Batch, budget: int, options: dict[str, Any],
         do_measure: bool, steps: int) -> PlanRow:
    method, preset = variant(name)
    options = {**preset, **options}
    try:
        est, trainable = _estimated(model, method, options, batch)
    except UnsupportedModelError as err:
        return PlanRow(name, supported=False, note=str(err).split(";")[0])
    except MissingExtra as err:
        return PlanRow(name, supported=False, note=str(err).split(": ", 1)[1])
    measured = measure(model, method, batch, options=options, steps=steps) if do_measure else None
    peak = measured.peak_bytes if measured else est.total
    return PlanRow(name, True, "", trainable, est, measured, fits=peak <= budget)


def plan(model: ModelFactory, device: DeviceProfile, batch: Batch, *, methods: Sequence[str] | None = None,
         options: dict[str, dict[str, Any]] | None = None, measure_memory: bool = True, steps: int = 2,
         progress: Callable[[str], None] | None = None, inference_base: str = "fp32") -> Plan:
    """Estimate (and measure) every method on ``batch`` and recommend the best one that fits ``device``.

    ``inference_base``: how the frozen weights of the reference forward pass are stored (fp32, q4, q8).

    Raises :class:`BudgetError` naming the smallest budget that would work when nothing fits.
    """
    options = options or {}
    budget = device.memory_budget_bytes
    names = list(methods) if methods else default_rows(model)
    rows = []
    for name in names:
        if progress:
            progress(name)
        rows.append(_row(model, name, batch, budget, options.get(name, {}), measure_memory, steps))
    net = _build(model, inference_base, meta=isinstance(model, str))
    inference = PlanRow("inference", True, "", 0, estimate_inference(net, _like(batch, net)),
                        measure(model, "inference", batch, options={"base": inference_base}, steps=steps)
                        if measure_memory else None)
    del net
    fitting = [r.method for r in rows if r.fits]
    if not fitting:
        raise BudgetError(_nothing_fits(device, rows, len(batch[0])))
    best = min(fitting, key=_rank)
    return Plan(device, len(batch[0]), inference, tuple(rows), best)


def _nothing_fits(device: DeviceProfile, rows: list[PlanRow], batch_size: int) -> str:
    sized = [(r.peak_bytes, r.method) for r in rows if r.peak_bytes is not None]
    if not sized:
        return f"no training method supports this model; tried {[r.method for r in rows]}"
    smallest, method = min(sized)
    return (f"no training method fits device {device.name!r} ({format_bytes(device.memory_budget_bytes)}) at "
            f"batch {batch_size}: the smallest is {method} at {format_bytes(smallest)}. A budget of "
            f"{format_bytes(smallest)} would work; or try a smaller --batch or a smaller model.")
