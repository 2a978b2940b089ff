"""DP-FedAvg as a strategy: the server needs no privacy code of its own beyond choosing ``dp-fedavg``.

McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018 (central noise on the
clipped sum, fixed denominator), with adaptive clipping from Andrew et al., NeurIPS 2021.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pocketlearn.errors import Validated, number_problem
from pocketlearn.federated.privacy.config import DPConfig
from pocketlearn.federated.privacy.mechanism import PrivacyMechanism
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.updates import RoundUpdates


@dataclass(frozen=True, kw_only=True)
class DPFedAvg(Validated, Strategy):
    """Clip each client's update, sum, add Gaussian noise, divide by ``expected_clients``, step by ``server_lr``.

    ``expected_clients`` (clients sampled per round, also the fixed denominator) and ``num_clients`` (the
    population the sampler draws them from without replacement: clients whose device can train) are public and
    set the sampling the accountant charges. ``dp`` takes a DPConfig or its fields as a table. ``state_dict``
    holds the round count, clip bound, accountant and the secret state of the noise generator, so a resumed run
    draws the same noise and reports the same ε: it belongs in the server checkpoint and nowhere else.
    """

    name = "dp-fedavg"
    expected_clients: int
    num_clients: int
    dp: DPConfig = field(default_factory=DPConfig)
    server_lr: float = 1.0
    _mechanism: PrivacyMechanism = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.dp, dict):  # a TOML table
            object.__setattr__(self, "dp", DPConfig.from_dict(self.dp))
        super().__post_init__()
        mechanism = PrivacyMechanism(self.dp, expected_clients=self.expected_clients, num_clients=self.num_clients)
        object.__setattr__(self, "_mechanism", mechanism)

    def problems(self) -> list[str]:
        out = [*number_problem("server_lr", self.server_lr, lambda x: x > 0, "> 0")]
        for name in ("expected_clients", "num_clients"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{name} should be an integer >= 1, got {value!r}")
        if not isinstance(self.dp, DPConfig):
            out.append(f"dp should be a DPConfig or a table of its fields, got {type(self.dp).__name__}")
        return out

    @property
    def mechanism(self) -> PrivacyMechanism:
        return self._mechanism

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        self.apply_means(params, self._mechanism.privatize(updates, self._mechanism.rounds + 1))

    def apply_means(self, params: dict[str, Tensor], means: dict[str, Tensor]) -> None:
        """The server step from already private means (mixed-method runs privatize in their wire space)."""
        with torch.no_grad():
            for name, mean in means.items():
                params[name].add_(mean, alpha=self.server_lr)

    def epsilon_so_far(self) -> float:
        return self._mechanism.epsilon_so_far()

    def state_dict(self) -> dict[str, Any]:
        return {"privacy": self._mechanism.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._mechanism.load_state_dict(state["privacy"])
