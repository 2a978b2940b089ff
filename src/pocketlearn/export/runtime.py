"""Train an exported program with the ExecuTorch runtime alone: its forward_backward and its SGD.

No PyTorch autograd runs here: the runtime computes the loss and the gradients, its optimizer updates the
program's own parameters in place, and torch only carries tensors in and out. The result maps back to the
model's state dict, so :func:`pocketlearn.checkpoint.load_weights` reads what :func:`save_trained` writes.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pocketlearn.checkpoint import save_checkpoint
from pocketlearn.errors import ConfigError, DataError
from pocketlearn.evaluate import batches_of
from pocketlearn.export.program import FORWARD_METHOD, STATE_METHOD, ProgramError, ProgramInfo, read_info
from pocketlearn.methods.base import Batch, check_finite

PREFIX = "model."  # the exported TrainingStep holds the model under this name


class DeviceTrainer:
    """An exported training step loaded into the ExecuTorch runtime, stepped with the runtime's SGD."""

    def __init__(self, program: str | Path, *, lr: float | None = None):
        self.info = read_info(program)
        self.lr = self.info.lr if lr is None else lr
        if not self.lr > 0:
            raise ConfigError(f"lr should be positive, got {self.lr}")
        self.module = load_program(program, needs_state=bool(self.info.frozen))
        self._optimizer: Any = None
        self.steps_done = 0

    def step(self, batch: Batch) -> float:
        """One forward + backward + SGD update on ``batch``; returns the loss before the update."""
        try:
            (loss,) = self.module.forward_backward(FORWARD_METHOD, batch)
        except RuntimeError as err:
            info = self.info
            raise DataError(f"the runtime rejected the batch ({err}); this program takes {info.batch_size} x "
                            f"{info.input_shape} {info.input_dtype} inputs and int64 targets, contiguous: pass "
                            "the data through prepare_examples") from err
        if self._optimizer is None:  # the runtime names its parameters only after the first step
            from executorch.extension.training import get_sgd_optimizer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental API"
                self._optimizer = get_sgd_optimizer(self.module.named_parameters(), self.lr,
                                                    self.info.momentum, 0.0, self.info.weight_decay)
        self._optimizer.step(self.module.named_gradients())
        self.steps_done += 1
        return check_finite(float(loss), "device-train")

    def state_dict(self) -> dict[str, Tensor]:
        """The model's state dict: frozen tensors as exported, trainable ones as trained so far."""
        frozen = self.info.frozen
        values = dict(zip(frozen, self.module.model.run_method(STATE_METHOD, ()) if frozen else [], strict=True))
        params = self._parameters()
        return {k: values[k] if k in values else params[PREFIX + k].clone() for k in self.info.state_keys}

    def _parameters(self) -> dict[str, Tensor]:
        """The runtime's parameters by name, which it gives only after a forward_backward.

        Before the first step, one runs on a zero batch: it computes gradients only, so nothing changes.
        """
        if self.steps_done == 0:
            info = self.info
            zeros = (torch.zeros(info.batch_size, *info.input_shape, dtype=getattr(torch, info.input_dtype)),
                     torch.zeros(info.batch_size, *info.target_shape, dtype=torch.long))
            self.module.forward_backward(FORWARD_METHOD, zeros)
        return self.module.named_parameters()


def load_program(path: str | Path, *, needs_state: bool = False) -> Any:
    """The runtime's TrainingModule for ``path``; anything it cannot load is a :class:`ProgramError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental API"
            from executorch.extension.training import _load_for_executorch_for_training

            module = _load_for_executorch_for_training(str(path))
            names = set(module.model.method_names())
    except RuntimeError as err:
        raise ProgramError(f"the ExecuTorch runtime cannot load {path} ({err}); it is truncated or not a .pte, "
                           "export it again") from err
    if FORWARD_METHOD not in names or (needs_state and STATE_METHOD not in names):
        raise ProgramError(f"{path} is not a pocketlearn training program (it has methods {sorted(names)}); "
                           "export one with `pocketlearn export`")
    return module


def prepare_examples(info: ProgramInfo, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Check and convert examples to what the program takes; every mismatch is a :class:`DataError`."""
    shape, n = tuple(info.input_shape), len(x)
    where = f"the program ({info.model}, {info.method}) was exported for"
    if n < info.batch_size:
        raise DataError(f"{n} examples, but {where} batches of {info.batch_size} (a static size); export again "
                        f"with --batch {max(n, 1)} or fewer, or give more examples")
    if tuple(x.shape[1:]) != shape:
        if x[0].numel() != math.prod(shape):
            raise DataError(f"examples have shape {list(x.shape[1:])}, but {where} inputs of shape {list(shape)}; "
                            "write the data in that shape, or export a model that takes it")
        x = x.reshape(n, *shape)  # e.g. flattened images for a model that takes (1, 28, 28)
    if info.input_dtype == "int64":
        if x.is_floating_point():
            raise DataError(f"inputs are {x.dtype}, but {where} token ids (int64); write integer ids")
        _check_range(x.long(), info.num_classes, "input token ids")
    if tuple(y.shape[1:]) != tuple(info.target_shape):
        raise DataError(f"targets have shape {list(y.shape[1:])}, but {where} targets of shape "
                        f"{info.target_shape} per example; write one label per example (or per token for an LM)")
    if y.is_floating_point():
        raise DataError(f"targets are {y.dtype}, but cross-entropy needs integer class labels; write int64 labels")
    _check_range(y.long(), info.num_classes, "labels", ignore=-100)
    return x.to(getattr(torch, info.input_dtype)).contiguous(), y.long().contiguous()


def _check_range(t: Tensor, size: int, what: str, ignore: int | None = None) -> None:
    """Out-of-range indices would read outside the runtime's buffers; catch them on the host."""
    bad = (t < 0) | (t >= size)
    if ignore is not None:
        bad &= t != ignore
    if bool(bad.any()):
        raise DataError(f"{what} should lie in [0, {size}), found {int(t[bad][0])}; is the data for this model?")


def fixed_batches(x: Tensor, y: Tensor, batch_size: int, *, seed: int = 0) -> Iterator[Batch]:
    """Endless full batches: epoch ``e`` is a shuffle seeded ``seed + e``; its last partial batch is dropped."""
    epoch = 0
    while True:
        for batch in batches_of(x, y, batch_size, seed=seed + epoch):
            if len(batch[0]) == batch_size:
                yield batch
        epoch += 1


@dataclass
class DeviceTrainResult:
    losses: list[float]  # per step, before its update
    state: dict[str, Tensor]
    info: ProgramInfo


def device_train(program: str | Path, x: Tensor, y: Tensor, *, steps: int, lr: float | None = None,
                 seed: int = 0, on_step: Callable[[int, float], None] | None = None) -> DeviceTrainResult:
    """Train the exported ``program`` for ``steps`` steps on (x, y) with the ExecuTorch runtime."""
    if steps < 1:
        raise ConfigError(f"steps should be >= 1, got {steps}")
    trainer = DeviceTrainer(program, lr=lr)
    x, y = prepare_examples(trainer.info, x, y)
    losses: list[float] = []
    for batch in itertools.islice(fixed_batches(x, y, trainer.info.batch_size, seed=seed), steps):
        losses.append(trainer.step(batch))
        if on_step is not None:
            on_step(len(losses), losses[-1])
    return DeviceTrainResult(losses, trainer.state_dict(), trainer.info)


def plain_state(info: ProgramInfo, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The plain model's state dict, the layout ``build_model(info.model)`` loads.

    The method folds back what it rewrote: LoRA adapters merged, sparse row slices joined (its ``plain_state``).
    """
    from pocketlearn.checkpoint import load_model_state
    from pocketlearn.methods import get_method_class, make_method
    from pocketlearn.models import build_model

    model = make_method(info.method, build_model(info.model), **info.options).model
    load_model_state(model, state, what="the program's weights", remedy="export the program again")
    return get_method_class(info.method).plain_state(model)


def save_trained(path: str | Path, result: DeviceTrainResult, *, merged: bool = False) -> None:
    """Write ``{"model": state_dict, ...}``, the layout :func:`pocketlearn.checkpoint.load_weights` reads.

    The state fits the model built as exported (``make_method(method, build_model(model), **options).model``);
    ``merged`` writes :func:`plain_state` instead, which fits ``build_model(model)``.
    """
    state = plain_state(result.info, result.state) if merged else result.state
    save_checkpoint(path, {"model": state, "steps": len(result.losses), "losses": result.losses,
                           "program": asdict(result.info), "merged": merged})
