"""The ways the app fine-tunes an LLM, and the check that the chosen one fits the device.

Each choice is a registered pocketlearn method with settings that work for a 135M-parameter LM; the memory
check goes through :func:`pocketlearn.memory.plan`, so it is measured in a fresh process when asked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, ConfigError
from pocketlearn.memory.measure import ModelFactory
from pocketlearn.memory.planner import PlanRow, plan
from pocketlearn.methods.base import Batch


@dataclass(frozen=True)
class Choice:
    """A registered method with its options for LLM fine-tuning."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    help: str = ""
    lr_by_architecture: dict[str, float] = field(default_factory=dict)  # transformers model_type -> lr

    def with_overrides(self, lr: float | None = None, options: dict[str, Any] | None = None,
                       model: nn.Module | None = None) -> dict[str, Any]:
        """The method options (for ``model``'s architecture), with the run's learning rate and options on top."""
        architecture = getattr(getattr(model, "config", None), "model_type", None)
        default = {"lr": self.lr_by_architecture[architecture]} if architecture in self.lr_by_architecture else {}
        return {**self.options, **default, **({"lr": lr} if lr is not None else {}), **(options or {})}


CHOICES: dict[str, Choice] = {c.name: c for c in [
    Choice("lora", "lora", {"lr": 1e-3, "optimizer": "adamw", "rank": 8},
           "LoRA adapters (rank 8) with AdamW; -o checkpointing=true trades time for activation memory"),
    Choice("mezo", "mezo", {"subset": "lora", "lr": 1e-3, "eps": 1e-3, "rank": 8},  # 3e-3 diverged on SmolLM2
           "MeZO (zeroth-order, forward passes only) on LoRA adapters: about inference memory",
           {"gemma3_text": 3e-4}),  # Gemma-3-270M's held-out perplexity rises from the 9th step at 1e-3
    Choice("mezo-full", "mezo", {"subset": "all", "lr": 1e-6, "eps": 1e-3},
           "MeZO on every weight: no adapters, still about inference memory"),
    Choice("backprop", "backprop", {"lr": 1e-5, "optimizer": "adamw"},
           "full fine-tuning with AdamW: weights, gradients and two moments (~4x inference)"),
]}


def get_choice(name: str) -> Choice:
    if name not in CHOICES:
        raise ConfigError(f"unknown LLM fine-tuning method {name!r}; choose one of {sorted(CHOICES)}")
    return CHOICES[name]


@dataclass(frozen=True)
class MemoryCheck:
    """Peak memory of one step of the chosen method and of a forward pass, at the run's batch."""

    method: str
    peak_bytes: int
    inference_bytes: int
    measured: bool  # True: measured in a fresh process; False: the analytic estimate
    budget_bytes: int | None

    @property
    def ratio(self) -> float:
        return self.peak_bytes / max(self.inference_bytes, 1)


def _peak(row: PlanRow) -> int:
    peak = row.peak_bytes
    if peak is None:
        raise ConfigError(f"{row.method}: {row.note or 'not supported by this model'}")
    return peak


def check_memory(model: ModelFactory, choice: Choice, options: dict[str, Any], batch: Batch,
                 device: DeviceProfile | None, *, measure_memory: bool = True) -> MemoryCheck:
    """Plan ``choice`` on ``batch``; raise :class:`BudgetError` naming what fits when it exceeds ``device``.

    The planner runs against an unbounded copy of the device so that it returns the peak, which is then
    compared with the real budget here (the planner itself only says that nothing fit).
    """
    unbounded = dataclasses.replace(device or DeviceProfile("unbounded", 1), memory_budget_bytes=2**62)
    result = plan(model, unbounded, batch, methods=[choice.method], options={choice.method: options},
                  measure_memory=measure_memory, inference_base=str(options.get("base", "fp32")))
    row = result.rows[0]
    check = MemoryCheck(choice.name, _peak(row), _peak(result.inference), row.measurement is not None,
                        device.memory_budget_bytes if device else None)
    if device is not None and check.peak_bytes > device.memory_budget_bytes:
        raise BudgetError(_too_big(model, check, device, batch))
    return check


def _too_big(model: ModelFactory, check: MemoryCheck, device: DeviceProfile, batch: Batch) -> str:
    """The error text: the need, the budget, and which other choices fit (estimated, to answer quickly)."""
    budget = device.memory_budget_bytes
    unbounded = dataclasses.replace(device, memory_budget_bytes=2**62)
    others = []
    for other in CHOICES.values():
        if other.name == check.method:
            continue
        row = plan(model, unbounded, batch, methods=[other.method], options={other.method: other.options},
                   measure_memory=False).rows[0]
        if row.peak_bytes is not None:
            others.append((row.peak_bytes, other.name))
    fitting = [f"{name} (~{format_bytes(peak)})" for peak, name in sorted(others) if peak <= budget]
    b, t = batch[0].shape[:2]
    head = (f"{check.method} at batch {b} x {t} tokens needs {format_bytes(check.peak_bytes)}"
            f"{'' if check.measured else ' (estimated)'}; device {device.name!r} allows {format_bytes(budget)}. ")
    if fitting:
        return head + f"What fits: {', '.join(fitting)}; use --method {sorted(others)[0][1]}, or a smaller batch."
    smallest = min([(check.peak_bytes, check.method), *others])
    return head + (f"No method fits: the smallest is {smallest[1]} at ~{format_bytes(smallest[0])}; a device with "
                   "that much memory, a smaller --batch-size or a shorter --seq-len would work.")
