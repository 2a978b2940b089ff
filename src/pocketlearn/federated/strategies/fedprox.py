"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from pocketlearn.errors import number_problem
from pocketlearn.federated.strategies.fedavg import FedAvg


@dataclass(frozen=True, kw_only=True)
class FedProx(FedAvg):
    """FedAvg whose clients add (mu/2)·||w - w_global||² to their loss.

    Use it when clients are heterogeneous (skewed data, very different amounts of local work): the proximal
    term keeps each client near the global model, so local steps drift less. The server side is FedAvg; the
    engines read ``proximal_mu`` and add the term on the clients. ``mu=0`` is FedAvg.
    """

    name = "fedprox"
    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "proximal_mu", float(self.mu))

    def problems(self) -> list[str]:
        return [*super().problems(), *number_problem("mu", self.mu, lambda x: x >= 0, ">= 0")]
