"""The one interface every way of computing an update implements.

A method wraps the user's own model in place (freezing, adding adapters, swapping layers), then turns
batches into updates of the trainable state. It also declares what it keeps in memory, so that the
analytic estimator and the planner can reason about it without running it.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError, TrainingError, Validated

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
# How an update travels in a mixed-method round (pocketlearn.federated.mixed): the change of the trained
# parameters, LoRA's B factors, or one coefficient per pooled seed
WireKind = Literal["dense", "lora", "zo"]


def logits_of(output: Any) -> Tensor:
    """Plain modules return a tensor; transformers models return an object with ``.logits``."""
    return output.logits if hasattr(output, "logits") else output


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy for classification (B, C) and for language modelling (B, T, V)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


Precision = Literal["fp32", "bf16"]


def autocast(precision: Precision) -> contextlib.AbstractContextManager[object]:
    """Mixed precision for a forward pass: bf16 matmuls and convolutions, fp32 weights, losses and gradients."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def forward_loss(model: nn.Module, batch: Batch, loss_fn: LossFn = cross_entropy) -> Tensor:
    """The loss of ``model`` on ``batch``; an LM with a quantized tied head skips the full logits."""
    inputs, targets = batch
    if loss_fn is cross_entropy:
        from pocketlearn.quant.model import lean_lm_loss

        lean = lean_lm_loss(model, inputs, targets)
        if lean is not None:
            return lean
    return loss_fn(logits_of(model(inputs)), targets)


def check_finite(loss: float, method: str) -> float:
    if not math.isfinite(loss):
        raise TrainingError(
            f"{method}: the loss is {loss}; training diverged. Lower the learning rate (lr) or check the data "
            "for NaN/inf values."
        )
    return loss


@dataclass(frozen=True)
class MethodConfig(Validated):
    """Settings every method has."""

    lr: float = 0.05

    def problems(self) -> list[str]:
        """Every invalid value at once (subclasses extend the list)."""
        return [] if self.lr > 0 else [f"lr should be positive, got {self.lr}"]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no option {unknown}; options are {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class GradientConfig(MethodConfig):
    """Settings of the methods that run autograd's backward pass."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    precision: Precision = "fp32"  # "bf16": forward and backward in bfloat16 autocast, fp32 master weights
    # > 0: run the batch's forward and backward this many examples at a time, adding up the gradients (the
    # same update as the whole batch at once, for 1/k of its activation memory)
    micro_batch: int = 0

    def problems(self) -> list[str]:
        out = super().problems()
        if self.optimizer not in ("sgd", "adamw"):
            out.append(f"optimizer should be 'sgd' or 'adamw', got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            out.append(f"momentum should be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            out.append(f"weight_decay should be >= 0, got {self.weight_decay}")
        if self.precision not in ("fp32", "bf16"):
            out.append(f"precision should be 'fp32' or 'bf16', got {self.precision!r}")
        if self.micro_batch < 0:
            out.append(f"micro_batch should be >= 0 (0: the whole batch at once), got {self.micro_batch}")
        return out

    @property
    def optimizer_slots(self) -> int:
        """fp32 tensors the optimizer keeps per trainable parameter."""
        if self.optimizer == "adamw":
            return 2
        return 1 if self.momentum > 0 else 0


ActivationPolicy = Literal["autograd", "all_layers", "one_layer"]


@dataclass(frozen=True)
class MemoryTraits:
    """What a method keeps in memory during a step, for :func:`pocketlearn.memory.estimate`.

    ``activations``: ``autograd`` — whatever autograd saves for the backward pass; ``all_layers`` — every
    layer's output is kept until the update (PEPITA); ``one_layer`` — only the widest layer's input and
    output live at once (forward-only methods: MeZO, MEMPEPITA).
    ``gradient_bytes_per_param`` / ``optimizer_slots`` apply to the trainable parameters;
    ``temporary_param_copies`` counts buffers the size of the largest parameter (MeZO's noise ``z``).
    """

    activations: ActivationPolicy
    gradient_bytes_per_param: int
    optimizer_slots: int
    temporary_param_copies: int = 0
    extra_bytes: int = 0


class TrainingMethod(ABC):
    """Turns (model, batch, loss) into an update of the model's trainable state."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # Facts the rest of pocketlearn reads off the class, so that a new method is its own file plus one registry
    # line (tables of them are built from the registry). The defaults suit a method that takes part in nothing.
    # its update's form in a mixed-method round (a linear map onto the plain model's weights); None: it cannot mix
    wire_kind: ClassVar[WireKind | None] = None
    # place in the planner's order of expected final quality, lower first: full fine-tuning, the methods that
    # train most of the model with true gradients, the cheap gradient ones, the gradient-free ones
    # (benchmarks/methods.py); gaps of 10 leave room for a new method between two
    quality_rank: ClassVar[int] = 1000
    # its step exports as an ExecuTorch autograd program (pocketlearn.export): an SGD step on plain layers
    exportable: ClassVar[bool] = False
    # its step is plain SGD on the bare model, which the in-process engine trains many clients at once
    vectorizes: ClassVar[bool] = False
    # its config has ``momentum`` and ``weight_decay``, which a federated run's client settings fill in
    takes_momentum: ClassVar[bool] = False
    # it keeps each step's (seed, projected gradient) in ``history`` and takes a ``seed`` option, so its update
    # can travel as seeds (seed exchange) and each client perturbs along its own directions
    sends_seeds: ClassVar[bool] = False

    @classmethod
    def plain_state(cls, model: nn.Module) -> dict[str, Tensor]:
        """The plain model's state dict (``build_model``'s layout) from a model this method prepared.

        A method that rewrites layers (adapters, split weights) folds them back, without autograd.
        """
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    @classmethod
    def vectorizes_with(cls, options: Mapping[str, object]) -> bool:
        """Whether the in-process engine may train it batched with these options (they keep it plain SGD)."""
        return cls.vectorizes

    def __init__(self, model: nn.Module, config: MethodConfig | None = None, *, loss_fn: LossFn = cross_entropy):
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ConfigError(f"{self.name} takes a {self.config_cls.__name__}, got {type(self.config).__name__}")
        self.loss_fn = loss_fn
        self.model = self.prepare(model)
        self.steps_done = 0

    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze, wrap or rewrite the model in place for this method; return the model to train."""

    @abstractmethod
    def _update(self, batch: Batch) -> float:
        """Apply one update to the trainable state; return the loss measured before it."""

    @abstractmethod
    def memory_traits(self) -> MemoryTraits:
        """What this method keeps in memory during a step."""

    def step(self, batch: Batch) -> float:
        """One training step on ``batch``; returns the loss before the update."""
        self.model.train()
        loss = check_finite(self._update(batch), self.name)
        self.steps_done += 1
        return loss

    def trainable_parameters(self) -> dict[str, Tensor]:
        """The tensors this method changes, by name (the natural federated update)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def running_statistics(self) -> dict[str, Tensor]:
        """Buffers that training changes besides the parameters (none unless a method's layers keep statistics)."""
        return {}

    def trained_state(self) -> dict[str, Tensor]:
        """Everything a federated round changes and averages: the trained parameters and running statistics.

        A model's state is both. A network fine-tuned with its batch norms in training mode whose server kept
        only the averaged weights would evaluate with the pretrained running statistics, not the ones its
        weights were trained with; Flower's PyTorch clients send the whole state dict for the same reason.
        """
        return {**self.trainable_parameters(), **self.running_statistics()}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def summary(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = self.num_trainable()
        return (f"{self.name}: trainable params: {trainable:,} || all params: {total:,} || "
                f"trainable%: {100 * trainable / max(total, 1):.4f}")

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the model's parameters (optimizer state, counters) for checkpoints."""
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))


class GradientMethod(TrainingMethod):
    """Methods that choose a subset of parameters to train and update them with autograd + an optimizer."""

    config: GradientConfig
    config_cls: ClassVar[type[MethodConfig]] = GradientConfig
    takes_momentum = True

    def prepare(self, model: nn.Module) -> nn.Module:
        model = self.select_trainable(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"{self.name}: nothing left to train in this model; check the method's options")
        self._params: list[nn.Parameter] = params
        self._optimizer: torch.optim.Optimizer | None = None
        return model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Made on first use: the first ``torch.optim`` import costs ~1 s, which planning alone never needs."""
        if self._optimizer is None:
            self._optimizer = make_optimizer(self._params, self.config)
        return self._optimizer

    @abstractmethod
    def select_trainable(self, model: nn.Module) -> nn.Module:
        """Set ``requires_grad`` (and add modules) so that only this method's parameters train."""

    def _update(self, batch: Batch) -> float:
        loss = self.backward(batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def backward(self, batch: Batch) -> float:
        """Accumulate the batch's gradient (micro-batch by micro-batch if asked); return its mean loss."""
        total = 0.0
        for part, share in micro_batches(batch, self.config.micro_batch):
            with autocast(self.config.precision):
                loss = forward_loss(self.model, part, self.loss_fn).float()
            (loss * share).backward()
            total += loss.item() * share
        return total

    def running_statistics(self) -> dict[str, Tensor]:
        """The running mean and variance of every batch norm that normalizes with its batch's statistics here.

        A frozen batch norm on the lean path uses (and keeps) its running statistics, so it has none to send.
        """
        from pocketlearn.methods.lean import LeanBatchNorm2d

        out = {}
        for name, m in self.model.named_modules():
            frozen = isinstance(m, LeanBatchNorm2d) and m.frozen
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and not frozen:
                assert m.running_var is not None
                out[f"{name}.running_mean"], out[f"{name}.running_var"] = m.running_mean, m.running_var
        return out

    def memory_traits(self) -> MemoryTraits:
        return MemoryTraits("autograd", gradient_bytes_per_param=4, optimizer_slots=self.config.optimizer_slots)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def make_optimizer(params: list[nn.Parameter], config: GradientConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def micro_batches(batch: Batch, size: int) -> list[tuple[Batch, float]]:
    """Split ``batch`` into parts of ``size`` examples, each with its share of the batch's mean loss.

    The share is the part's count of targets (tokens that are not -100, for LMs) over the batch's, so the
    shares' weighted losses add up to the mean over the whole batch, and so do their gradients.
    """
    inputs, targets = batch
    if size <= 0 or size >= len(inputs):
        return [(batch, 1.0)]
    counted = [int((t != -100).sum()) if not t.is_floating_point() else t.shape[0]
               for t in targets.split(size)]
    total = max(sum(counted), 1)
    return [((x, t), n / total) for x, t, n in zip(inputs.split(size), targets.split(size), counted, strict=True)]


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def weight_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Leaf Linear/Conv layers in registration order (forward order for the models pocketlearn ships)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            yield name, module


def head_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The output layer: ``lm_head`` for transformers LMs, else the last Linear layer."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is not None:
        return next((n, m) for n, m in model.named_modules() if m is head)
    layers = [(n, m) for n, m in weight_layers(model) if isinstance(m, nn.Linear)]
    return layers[-1] if layers else None


def untied_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The output layer, unless it shares its weight with the input embeddings (an LM's 28M-row table)."""
    head = head_module(model)
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if head is None or (embeddings is not None and head[1].weight is getattr(embeddings, "weight", None)):
        return None
    return head


def train_biases(model: nn.Module) -> None:
    """Unfreeze every bias: cheap to train, since a bias gradient needs no stored input."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
