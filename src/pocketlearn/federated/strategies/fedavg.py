"""Federated averaging, with a server learning rate.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017;
the server learning rate as in Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pocketlearn.errors import Validated, number_problem
from pocketlearn.federated.strategies.aggregate import weighted_means
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.strategies.checks import weighting_problem
from pocketlearn.federated.updates import RoundUpdates


@dataclass(frozen=True, kw_only=True)
class FedAvg(Validated, Strategy):
    """The default: move the global weights by the weighted mean of the client deltas.

    ``weighting="samples"`` weights each client by its sample count (the unbiased average of the clients'
    data); ``"uniform"`` gives each client one vote (fairer to small clients, noisier). A parameter only some
    clients trained is averaged over those clients. ``server_lr`` > 1 speeds up slow rounds, < 1 damps noisy ones.
    """

    name = "fedavg"
    weighting: str = "samples"  # "samples" | "uniform"
    server_lr: float = 1.0

    def problems(self) -> list[str]:
        return [*weighting_problem(self.weighting),
                *number_problem("server_lr", self.server_lr, lambda x: x > 0, "> 0")]

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        with torch.no_grad():
            for name, mean in weighted_means(updates, self.weighting):
                params[name].add_(mean, alpha=self.server_lr)
