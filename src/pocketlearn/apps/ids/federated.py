"""Federated IDS by event-driven FedAvg.

Devices that accepted an update send its delta, the server averages with a pocketlearn
strategy object (FedAvg by default), and every device is offered the new global model.

This uses ``pocketlearn.federated.strategies`` directly rather than the full ``FederatedServer`` engine: the
engine samples clients for fixed training rounds, while here updates are event-driven (a device only has
something to send after its drift detector fired), which a small sync loop expresses more simply.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pocketlearn.apps.ids.device import DeviceLearner
from pocketlearn.errors import ConfigError
from pocketlearn.federated.strategies import make_strategy
from pocketlearn.federated.updates import RoundUpdates


class IdsFederation:
    """Holds the global model and averages the devices' accepted updates at each sync."""

    def __init__(self, model: nn.Module, strategy: str = "fedavg", *, secagg_clip: float | None = None,
                 **options: Any):
        """Averaging with ``strategy``; or, given ``secagg_clip``, by secure aggregation.

        Under secure aggregation the server sees only the sum; each coordinate of a weighted delta is clipped to
        ``secagg_clip`` before it is quantized into the field.
        """
        if secagg_clip is not None and strategy != "fedavg":
            raise ConfigError(f"secure aggregation shows the server only the sum; strategy {strategy!r} needs each "
                              "update, use fedavg")
        self.global_model = copy.deepcopy(model).eval()
        self.strategy = make_strategy(strategy, **options)
        self.secagg_clip = secagg_clip
        self.rounds = 0
        self.uploaded_bytes = 0

    def sync(self, devices: Sequence[DeviceLearner]) -> int:
        """One round: average the deltas of devices with new learning; returns how many contributed."""
        senders = [d for d in devices if d.samples_learned > 0]
        if len(senders) < (2 if self.secagg_clip is not None else 1):
            return 0  # a lone update would be visible even under secure aggregation: it waits for company
        params = dict(self.global_model.named_parameters())
        deltas: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in params.items():
                deltas[name] = torch.stack([dict(d.model.named_parameters())[name].detach() - p for d in senders])
        updates = RoundUpdates([d.device_index for d in senders],  # type: ignore[attr-defined]
                               torch.tensor([float(d.samples_learned) for d in senders]), deltas)
        if self.secagg_clip is None:
            self.uploaded_bytes += sum(t.numel() * t.element_size() for t in deltas.values())
        else:
            from pocketlearn.federated.secagg import secure_mean

            updates, ledger = secure_mean(updates, threshold=0.5, clip=self.secagg_clip, seed=self.rounds)
            self.uploaded_bytes += int(ledger.sent.sum())
        self.strategy.apply({n: p.data for n, p in params.items()}, updates)
        self.rounds += 1
        for d in devices:
            d.samples_learned = 0
            d.offer(copy.deepcopy(self.global_model))
        return len(senders)
