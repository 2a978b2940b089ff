"""Partial training: a weak device trains only the LoRA adapters of the model's top blocks.

Backward stops at the lowest trained adapter, so the activations of the blocks below are never stored and
a device with less memory still contributes. The server averages each adapter over the clients that trained
it (:class:`pocketlearn.federated.updates.RoundUpdates` ``trained`` masks); an adapter nobody trained keeps
its value. Close in spirit to HetLoRA / FedRA-style layer allocation for heterogeneous devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError
from pocketlearn.federated.round import RoundResult, SimulatedEngine
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates
from pocketlearn.methods.base import head_module, weight_layers

Targets = tuple[str, ...] | None  # the Linear layers a client adapts; None = every one (the default targets)


def blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of blocks: the longest ``nn.ModuleList`` holding weight layers (Llama: model.layers)."""
    lists = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and any(True for _ in weight_layers(m))]
    if not lists:
        raise ConfigError("portion training needs a model whose blocks sit in an nn.ModuleList (transformers "
                          "decoders do); this model has none")
    return max(lists, key=lambda item: len(item[1]))


def top_block_targets(model: nn.Module, k: int | None) -> Targets:
    """Full names of the weight layers in the top ``k`` blocks (None or k >= depth: every layer, no subset)."""
    prefix, stack = blocks(model)
    if k is None or k >= len(stack):
        return None
    if k < 1:
        raise ConfigError(f"a device must train at least the top block; got k={k}")
    head = head_module(model)
    names = [f"{prefix}.{i}.{n}" for i in range(len(stack) - k, len(stack)) for n, _ in weight_layers(stack[i])]
    return tuple(n for n in names if head is None or n != head[0])


class PortionEngine(SimulatedEngine):
    """Wraps an :class:`InProcessEngine`: each client trains LoRA on its own targets, updates stacked with masks."""

    def __init__(self, inner: InProcessEngine, targets_of: Callable[[int], Targets]):
        self.inner, self.targets_of = inner, targets_of

    def train(self, params: dict[str, Tensor], client_ids: Sequence[int], rnd: int, local: LocalTraining
              ) -> RoundResult:
        groups: dict[Targets, list[int]] = {}
        for c in client_ids:
            groups.setdefault(self.targets_of(int(c)), []).append(int(c))
        results = [self.inner.train(params, ids, rnd, _with_targets(local, targets))
                   for targets, ids in groups.items()]
        rows = [(r, k) for r in results for k in range(len(r.updates))]
        rows.sort(key=lambda row: row[0].updates.client_ids[row[1]])  # back in the order asked for
        updates = RoundUpdates.stack([ClientUpdate(r.updates.client_ids[k], int(r.updates.num_samples[k]),
                                                   r.updates.client_delta(k)) for r, k in rows])
        losses = torch.stack([r.train_loss[k] for r, k in rows])
        return RoundResult(updates, losses)


def _with_targets(local: LocalTraining, targets: Targets) -> LocalTraining:
    if targets is None:
        return local
    if local.method != "lora":
        raise ConfigError(f"portion training adapts LoRA layers; client.method is {local.method!r}, use 'lora'")
    return replace(local, options=(*local.options, ("target_modules", targets)))
