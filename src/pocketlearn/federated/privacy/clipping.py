"""Bounding each client's influence: scale every update to an L2 norm of at most the clip bound.

The bound is the sensitivity the noise is calibrated to, so it must hold for the whole update of a client
(every parameter it trained together), vectorised over the K clients of a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pocketlearn.federated.updates import RoundUpdates

_TINY = torch.finfo(torch.float32).tiny


def clip_to_norm_(updates: RoundUpdates, bound: float) -> Tensor:
    """Scale down, in place, each client whose update norm exceeds ``bound``; return the norms before (K,)."""
    norms = updates.client_norms()  # (K,)
    updates.scale_clients((bound / norms.clamp_min(_TINY)).clamp(max=1.0))  # factor 1 leaves small ones exact
    return norms


@dataclass
class FixedClip:
    """A bound that never changes: the usual choice when a good one is known (from a non-private run)."""

    bound: float

    def clip_(self, updates: RoundUpdates) -> Tensor:
        return clip_to_norm_(updates, self.bound)

    def update(self, norms: Tensor, *, expected_clients: int, generator: torch.Generator) -> None:
        """Nothing to learn."""
        del norms, expected_clients, generator

    def state_dict(self) -> dict[str, Any]:
        return {"bound": self.bound}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bound = float(state["bound"])


@dataclass
class AdaptiveClip(FixedClip):
    """A bound that tracks the ``target_quantile`` of the clients' update norms.

    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, Algorithm 1: after
    each round C ← C·exp(−η·(b̃ − γ)), where b̃ is the noisy fraction of clients whose norm was at most C
    (noise std ``count_stddev`` on the count, divided by the expected number of clients, a public constant)
    and γ the target quantile. Geometric steps adapt as fast to norms of 1e-4 as to norms of 100.
    """

    target_quantile: float = 0.5
    lr: float = 0.2
    count_stddev: float = 0.0

    def update(self, norms: Tensor, *, expected_clients: int, generator: torch.Generator) -> None:
        unclipped = float((norms <= self.bound).sum())
        noise = float(torch.randn((), generator=generator)) * self.count_stddev
        fraction = (unclipped + noise) / expected_clients
        self.bound *= math.exp(-self.lr * (fraction - self.target_quantile))
