"""Federated HAR across users as natural clients, each scored on their own later windows.

The engine's stock HAPT split (``data.partition = "natural"``) makes users 1-24 the clients and holds users 25-30
out whole. Here every user is a client: a user trains on the first part of each of their activity bouts
(:func:`split_users`) and the global model is scored on every user's later windows (pooled, and per user at the
end); the engine takes this ready-made data instead of loading ``data.name``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from pocketlearn.apps.har.data import ALL_USERS, split_users
from pocketlearn.errors import ConfigError


@dataclass(frozen=True)
class FederatedHarConfig:
    """One federated run over HAPT users (hapt-mlp, FedAvg)."""

    users: tuple[int, ...] = ALL_USERS
    adapt_fraction: float = 0.5  # each client trains on this first share of its windows
    rounds: int = 20
    clients_per_round: int = 10
    method: str = "backprop"
    lr: float = 0.05
    momentum: float = 0.0
    local_epochs: int = 1
    batch_size: int = 16
    eval_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.clients_per_round <= len(self.users):
            raise ConfigError(f"clients_per_round should be between 1 and the {len(self.users)} users, got "
                              f"{self.clients_per_round}")

    def raw(self) -> dict[str, Any]:
        """The engine's RunConfig, as a dict (``pocketlearn fed simulate`` takes the same keys)."""
        return {"name": "har", "seed": self.seed, "rounds": self.rounds, "clients_per_round": self.clients_per_round,
                "model": {"name": "hapt-mlp"}, "data": {"name": "hapt", "partition": "natural"},
                "client": {"method": self.method, "lr": self.lr, "momentum": self.momentum,
                           "epochs": self.local_epochs, "batch_size": self.batch_size},
                "devices": {"mix": {"phone-1g": 1.0}, "availability": False},
                "eval": {"every": self.eval_every, "batch_size": 1024}}


@dataclass
class FederatedHarResult:
    rounds: list[dict[str, Any]]  # per round: bytes, clients, test_accuracy / test_loss when evaluated
    per_user: dict[int, float] = field(default_factory=dict)  # final model on each user's later windows
    initial_accuracy: float = float("nan")

    @property
    def final_accuracy(self) -> float:
        scored = [r["test_accuracy"] for r in self.rounds if "test_accuracy" in r]
        return scored[-1] if scored else float("nan")

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"final_accuracy": self.final_accuracy,
                               "mean_user_accuracy": statistics.mean(self.per_user.values()) if self.per_user
                               else None}


def user_clients(users: tuple[int, ...], adapt_fraction: float) -> tuple[Any, list[np.ndarray]]:
    """FederatedData with one client per user (their first windows) and every user's later windows as test."""
    from pocketlearn.federated.clients import InMemoryClients
    from pocketlearn.federated.experiment import FederatedData

    split = split_users((), users, adapt_fraction=adapt_fraction).users
    xs, ys, xts, yts, indices, test_slices, start, tstart = [], [], [], [], [], [], 0, 0
    for user in users:
        d = split[user]
        xs.append(d.x_adapt)
        ys.append(d.y_adapt)
        xts.append(d.x_test)
        yts.append(d.y_test)
        indices.append(np.arange(start, start + len(d.y_adapt)))
        test_slices.append(np.arange(tstart, tstart + len(d.y_test)))
        start += len(d.y_adapt)
        tstart += len(d.y_test)
    data = FederatedData(InMemoryClients(torch.cat(xs), torch.cat(ys), indices), torch.cat(xts), torch.cat(yts),
                         [f"user {u}" for u in users])
    return data, test_slices


def run_federated(config: FederatedHarConfig, on_round: Callable[[Any], None] | None = None) -> FederatedHarResult:
    """FedAvg over the users as clients; per-round pooled accuracy and final per-user accuracy."""
    from pocketlearn.apps.har.personalize import accuracy
    from pocketlearn.federated.config import parse_config
    from pocketlearn.federated.experiment import build_server

    data, test_slices = user_clients(config.users, config.adapt_fraction)
    server, _ = build_server(parse_config(config.raw()), None, data=data)
    initial = server.evaluate(server.model)["accuracy"]
    records = [r.to_json() for r in server.run(config.rounds, on_round)]
    per_user = {u: accuracy(server.model, data.x_test[s], data.y_test[s])
                for u, s in zip(config.users, test_slices, strict=True)}
    return FederatedHarResult(records, per_user, initial)
