"""Analytic estimate of a step's peak memory: weights + gradients + optimizer state + activations + temporaries.

Parameter-side terms come from the method's declared :class:`MemoryTraits` and the tensors' sizes.
Activations depend on the policy: for autograd methods, the bytes autograd saves during one forward pass
(counted with ``saved_tensors_hooks``, no backward run); for forward-only methods, the layers' outputs.
Temporaries are the transient buffers of the widest layer (its gradient in backward, its output in
forward). It is checked against :func:`pocketlearn.memory.measure` in the tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from pocketlearn.methods.base import Batch, TrainingMethod, cross_entropy, forward_loss


@dataclass(frozen=True)
class Estimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    temporaries: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.temporaries

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _storage_key(t: Tensor) -> int:
    """One key per storage (views and tied weights share it); a meta tensor's storage has no address, only an id."""
    storage = t.untyped_storage()
    return storage._cdata if t.is_meta else storage.data_ptr()


def model_state_bytes(model: nn.Module) -> int:
    """Parameters and buffers, each shared storage (tied weights) counted once."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


@contextmanager
def _layer_outputs(model: nn.Module) -> Iterator[list[int]]:
    """Bytes of every leaf module's output during a forward pass."""
    sizes: list[int] = []

    def hook(_m: nn.Module, _inputs: object, output: object) -> None:
        out = getattr(output, "logits", output)
        if isinstance(out, tuple):
            out = out[0]
        if isinstance(out, Tensor):
            sizes.append(out.nelement() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        yield sizes
    finally:
        for h in handles:
            h.remove()


def saved_bytes(model: nn.Module, run: Callable[[], object]) -> int:
    """Bytes autograd saves for backward while ``run()`` executes, each storage once, ``model``'s state excluded."""
    return sum(saved_by_module(model, run).values())


def saved_by_module(model: nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """The bytes autograd saved for backward while ``run()`` executed, by the innermost module running then.

    Where training memory goes, before changing anything: a frozen layer that still saves its input shows here.
    A tensor saved outside any submodule counts under ``""``; each storage counts once, where first saved.
    """
    state = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    running: list[str] = [""]
    saved: dict[int, tuple[str, int]] = {}

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in state and key not in saved:
            saved[key] = (running[-1], t.untyped_storage().nbytes())
        return t

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: running.append(name)

    def leave(*_: object) -> None:
        running.pop()

    handles = [h for name, m in model.named_modules() if name for h in (
        m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for h in handles:
            h.remove()
    out: dict[str, int] = {}
    for name, size in saved.values():
        out[name] = out.get(name, 0) + size
    return out


def _checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """Modules whose activations are recomputed in backward (ours, and transformers' decoder layers)."""
    from pocketlearn.methods.backprop import _Checkpointed

    layers = sys.modules.get("transformers.modeling_layers")
    hf_layer = getattr(layers, "GradientCheckpointingLayer", ()) if layers else ()
    return [m for m in model.modules() if isinstance(m, _Checkpointed)
            or (hf_layer and isinstance(m, hf_layer) and getattr(m, "gradient_checkpointing", False))]


def _autograd_activations(model: nn.Module, batch: Batch) -> tuple[int, int, list[int]]:
    """Bytes saved by a forward pass, bytes one checkpointed block saves when recomputed, the layers' outputs.

    A block is recomputed while the other blocks' inputs are still kept: its own activations add to the
    peak. They are counted by running the first block once more without checkpointing, on the inputs it saw.
    """
    blocks = _checkpointed_blocks(model)
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def record(_module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        calls.append((args, kwargs))

    grab = blocks[0].register_forward_pre_hook(record, with_kwargs=True) if blocks else None
    try:
        with _layer_outputs(model) as outputs:
            activations = saved_bytes(model, lambda: forward_loss(model, batch, cross_entropy))
    finally:
        if grab is not None:
            grab.remove()
    if not calls:
        return activations, 0, outputs
    args, kwargs = calls[0]
    blocks[0].eval()  # a block in eval mode runs without checkpointing (dropout aside, the same saved tensors)
    try:
        recompute = saved_bytes(model, lambda: blocks[0](*args, **kwargs))
    finally:
        blocks[0].train()
    return activations, recompute, outputs


def estimate(method: TrainingMethod, batch: Batch) -> Estimate:
    """Estimated peak of one training step of a prepared ``method`` on ``batch``.

    With micro-batches, activations are those of one micro-batch (the parts run one after the other).
    """
    model, traits = method.model, method.memory_traits()
    size = getattr(method.config, "micro_batch", 0)
    if size:  # the first of the parts micro_batches() makes (shapes only: it works on a skeleton too)
        batch = (batch[0][:size], batch[1][:size])
    trainable = sum(p.numel() for p in method.trainable_parameters().values())
    largest_param = max((p.numel() * p.element_size() for p in model.parameters()), default=0)
    if traits.activations == "autograd":
        model.train()
        activations, recompute, outputs = _autograd_activations(model, batch)
        # the gradient of the widest activation and its producer's, on top of a recomputed block's activations
        temporaries = recompute + 2 * max(outputs, default=0)
    else:
        with torch.no_grad(), _layer_outputs(model) as outputs:
            forward_loss(model, batch, cross_entropy)
        widest = max(outputs, default=0)
        activations = sum(outputs) if traits.activations == "all_layers" else widest
        temporaries = 2 * widest
    return Estimate(
        weights=model_state_bytes(model),
        gradients=traits.gradient_bytes_per_param * trainable,
        optimizer=4 * traits.optimizer_slots * trainable,
        activations=activations,
        temporaries=temporaries + traits.temporary_param_copies * largest_param + traits.extra_bytes,
    )


def estimate_inference(model: nn.Module, batch: Batch) -> Estimate:
    """Estimated peak of a prediction: weights plus the widest layer's input and output.

    An LM's prediction is its loss, as evaluation and MeZO compute it (a quantized head needs no full logits).
    """
    model.eval()
    with torch.no_grad(), _layer_outputs(model) as outputs:
        if batch[1].dim() == 2:
            forward_loss(model, batch, cross_entropy)
        else:
            model(batch[0])
    return Estimate(model_state_bytes(model), 0, 0, 0, 2 * max(outputs, default=0))
