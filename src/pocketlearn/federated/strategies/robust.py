"""Aggregators that a few bad clients (broken devices, poisoned data, attackers) cannot drag far.

Coordinate median and trimmed mean: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018. Norm bounding: Sun et al., "Can You Really Backdoor Federated Learning?", 2019.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pocketlearn.errors import Validated, number_problem
from pocketlearn.federated.strategies.aggregate import coordinate_median, trained_rows, trimmed_mean
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.strategies.fedavg import FedAvg
from pocketlearn.federated.updates import RoundUpdates


@dataclass(frozen=True)
class CoordinateMedian(Strategy):
    """Move each coordinate by the median of the clients' deltas.

    Unweighted, over the clients that trained the parameter; the mean of the two middle values when their
    number is even. Tolerates almost half the clients being arbitrary, at the price of noisier steps than
    FedAvg on honest, heterogeneous clients.
    """

    name = "median"

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        with torch.no_grad():
            for name, rows in trained_rows(updates):
                params[name].add_(coordinate_median(rows))


@dataclass(frozen=True)
class TrimmedMean(Validated, Strategy):
    """Move each coordinate by the mean of the clients' deltas without the ⌊βK⌋ largest and ⌊βK⌋ smallest.

    β = ``trim_fraction``; unweighted, over the K clients that trained the parameter. Tolerates up to a β
    share of bad clients while averaging the rest (less noisy than the median); with ⌊βK⌋ = 0 (few
    clients) it is the plain mean and no defence.
    """

    name = "trimmed-mean"
    trim_fraction: float = 0.1

    def problems(self) -> list[str]:
        return number_problem("trim_fraction", self.trim_fraction, lambda x: 0 <= x < 0.5,
                              "in [0, 0.5), so that some values are left after trimming both ends")

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        with torch.no_grad():
            for name, rows in trained_rows(updates):
                params[name].add_(trimmed_mean(rows, self.trim_fraction))


@dataclass(frozen=True)
class NormBounding(Validated, Strategy):
    """Scale each client's whole update down to L2 norm ``max_norm`` at most, then aggregate with ``inner``.

    A cheap defence against model replacement and backdoors: no single client can move the model further
    than ``max_norm``. Unlike median or trimmed mean it keeps weighted averaging (and any server optimizer)
    intact. The round's deltas are scaled in place. ``proximal_mu`` and state are the inner strategy's.
    """

    name = "norm-bounding"
    max_norm: float
    inner: Strategy = field(default_factory=FedAvg)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "proximal_mu", self.inner.proximal_mu)

    def problems(self) -> list[str]:
        out = number_problem("max_norm", self.max_norm, lambda x: x > 0, "> 0")
        if not isinstance(self.inner, Strategy):
            out.append(f"inner should be a Strategy, got {self.inner!r}")
        return out

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        norms = updates.client_norms()  # (K,)
        updates.scale_clients((self.max_norm / norms).clamp_(max=1.0))  # a zero norm gives inf, clamped to 1
        self.inner.apply(params, updates)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
