"""The one interface every aggregation strategy implements."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from pocketlearn.federated.updates import RoundUpdates


class Strategy:
    """Turns a round's client updates into the next global parameters.

    ``apply`` changes ``params`` (the global model's trainable parameters by name) in place, under no_grad.
    Strategies with state across rounds (server optimizer moments) expose it through ``state_dict`` so that a
    resumed run continues bit for bit. ``proximal_mu`` > 0 asks clients to add (mu/2)·||w - w_global||² to
    their loss (FedProx); the engines read it.
    """

    name: ClassVar[str]
    proximal_mu: float = 0.0

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
