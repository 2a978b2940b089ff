"""The one interface every aggregation strategy implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from pocketlearn.federated.updates import RoundUpdates

if TYPE_CHECKING:
    from pocketlearn.federated.privacy.mechanism import PrivacyMechanism


class Strategy:
    """Turns a round's client updates into the next global parameters.

    ``apply`` changes ``params`` (the global model's trainable parameters by name) in place, under no_grad.
    Strategies with state across rounds (server optimizer moments) expose it through ``state_dict`` so that a
    resumed run continues bit for bit. ``proximal_mu`` > 0 asks clients to add (mu/2)·||w - w_global||² to
    their loss (FedProx); the engines read it.
    """

    name: ClassVar[str]
    proximal_mu: float = 0.0

    @property
    def mechanism(self) -> PrivacyMechanism | None:
        """A private strategy's mechanism (clip bound, noise, accountant); None for a non-private one.

        The server's privacy steps (local noise on devices, distributed DP, mixed runs' private sums) use it.
        """
        return None

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        raise NotImplementedError

    def apply_means(self, params: dict[str, Tensor], means: dict[str, Tensor]) -> None:
        """The server step from means already made private elsewhere (only private strategies take them)."""
        raise NotImplementedError(f"strategy {self.name!r} takes client updates, not private means")

    def check_round_size(self, n: int, where: str = "this round") -> None:
        """ConfigError when ``n`` clients per round are too few for this strategy (a robust one's tolerance)."""
        del n, where

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
