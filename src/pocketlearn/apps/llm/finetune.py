"""Fine-tune an LLM on one user's text on one device, within its memory budget.

The step loop is the method's own ``step``; what this module adds is the LLM-shaped glue: the budget check
through the planner, held-out perplexity before and after, and the time taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pocketlearn.apps.llm.data import UserData
from pocketlearn.apps.llm.methods import MemoryCheck, check_memory, get_choice
from pocketlearn.devices import get_device
from pocketlearn.errors import ConfigError, Validated
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.memory.measure import ModelFactory
from pocketlearn.methods import TrainingMethod, make_method
from pocketlearn.methods.base import Batch


@dataclass(frozen=True)
class FinetuneConfig(Validated):
    """One on-device fine-tuning run: which method, how long, on which device."""

    method: str = "lora"  # a name from pocketlearn.apps.llm.methods.CHOICES
    steps: int = 30
    batch_size: int = 4
    lr: float | None = None  # None: the choice's own learning rate
    options: dict[str, Any] = field(default_factory=dict)  # extra method options (e.g. checkpointing=True)
    device: str | None = None  # a device preset whose budget the step must fit
    measure_memory: bool = True  # measure the step's peak in a fresh process (else estimate it)
    seed: int = 0

    def problems(self) -> list[str]:
        out = [f"{k} should be >= 1, got {v}" for k, v in (("steps", self.steps),
                                                           ("batch_size", self.batch_size)) if v < 1]
        if self.lr is not None and self.lr <= 0:
            out.append(f"lr should be positive, got {self.lr}")
        return out


@dataclass(frozen=True)
class FinetuneReport:
    user: str
    method: str
    steps: int
    batch_size: int
    trainable_params: int
    perplexity_before: float
    perplexity_after: float
    memory: MemoryCheck | None
    seconds: float
    losses: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("memory", "losses")}
        if self.memory is not None:
            out |= {"peak_bytes": self.memory.peak_bytes, "inference_bytes": self.memory.inference_bytes,
                    "peak_vs_inference": self.memory.ratio, "memory_measured": self.memory.measured,
                    "budget_bytes": self.memory.budget_bytes}
        return out | {"first_loss": self.losses[0], "last_loss": self.losses[-1]}


def perplexity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token cross-entropy) over the windows."""
    return evaluate(model, batches_of(x, y, batch_size))["perplexity"]


def training_batches(data: UserData, batch_size: int, steps: int, seed: int) -> list[Batch]:
    """``steps`` batches: shuffled epochs of the user's windows, one after another."""
    out: list[Batch] = []
    epoch = 0
    while len(out) < steps:
        out += batches_of(data.x, data.y, batch_size, seed=seed * 100_003 + epoch)
        epoch += 1
    return out[:steps]


def finetune(model: nn.Module, data: UserData, config: FinetuneConfig, *, factory: ModelFactory | None = None,
             on_step: Callable[[int, float], None] | None = None) -> tuple[TrainingMethod, FinetuneReport]:
    """Fine-tune ``model`` in place on the user's windows; returns the method (holding the model) and a report.

    ``factory`` builds fresh copies of the model for the memory check (a registered name such as
    ``"smollm2-135m"``, needed to measure in a fresh process); without it the check is skipped.
    """
    choice = get_choice(config.method)
    options = choice.with_overrides(config.lr, config.options, model)
    batches = training_batches(data, config.batch_size, config.steps, config.seed)
    device = get_device(config.device) if config.device else None
    if device is not None and factory is None:
        raise ConfigError("a device budget check builds fresh copies of the model: pass factory= (a registered "
                          "model name or a module-level function), or leave config.device unset")
    memory = check_memory(factory, choice, options, batches[0], device, measure_memory=config.measure_memory
                          ) if factory is not None else None
    before = perplexity(model, data.x_test, data.y_test)
    torch.manual_seed(config.seed)  # LoRA's initialisation
    method = make_method(choice.method, model, **options)
    start, losses = time.perf_counter(), []
    for i, batch in enumerate(batches):
        losses.append(method.step(batch))
        if on_step:
            on_step(i + 1, losses[-1])
    seconds = time.perf_counter() - start
    after = perplexity(method.model, data.x_test, data.y_test)
    return method, FinetuneReport(data.name, choice.name, config.steps, config.batch_size, method.num_trainable(),
                                  before, after, memory, seconds, tuple(losses))
