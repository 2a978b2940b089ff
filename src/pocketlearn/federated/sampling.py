"""Which clients take part in a round: those available, drawn without replacement, from a resumable stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pocketlearn.errors import ConfigError

if TYPE_CHECKING:
    from pocketlearn.federated.traces import Trace


class ClientSampler:
    """Draw ``per_round`` distinct clients per round among those eligible.

    A client is eligible in round r when it is allowed at all (its device can train) and, when availability is
    on, when its device is free that round (probability ``availability[c]``, drawn from ``(seed, r)`` so that
    it does not depend on earlier rounds). The draw itself comes from one numpy stream whose state is
    checkpointed. With every client eligible the draw is ``rng.choice(num_clients, k, replace=False)``, the
    same schedule as the anchor benchmarks.
    """

    def __init__(self, num_clients: int, per_round: int, *, seed: int, availability: np.ndarray | None = None,
                 availability_seed: int = 0, allowed: np.ndarray | None = None, trace: Trace | None = None):
        self.num_clients, self.per_round = num_clients, per_round
        self.rng = np.random.default_rng(seed)
        self.availability = availability
        self.availability_seed = availability_seed
        self.allowed = allowed if allowed is not None else np.ones(num_clients, dtype=bool)
        self.trace = trace  # availability over simulated time, instead of a chance per round

    def eligible(self, rnd: int, at_s: float = 0.0) -> np.ndarray:
        mask = self.allowed
        if self.trace is not None:
            return mask & self.trace.available(at_s)
        if self.availability is not None and (self.availability < 1).any():
            draws = np.random.default_rng([self.availability_seed, rnd]).random(self.num_clients)
            mask = mask & (draws < self.availability)
        return mask

    def population(self, rounds: int) -> int:
        """The fewest clients any of rounds 1..``rounds`` can draw from: what differential privacy charges.

        A round draws a fixed-size set without replacement from its eligible clients. Which clients are available
        comes from the public ``availability_seed``, so it earns no privacy amplification; a round with more
        eligible clients is more private than one with fewer, so accounting every round at the smallest
        eligible count over-charges, never under-charges.
        """
        if self.trace is not None:
            raise ConfigError("who is available follows devices.trace and the simulated clock, so the population a "
                              "round draws from is not known before the run; differential privacy needs it: drop "
                              "devices.trace, or the DP strategy")
        if self.availability is None or not (self.availability < 1).any():
            return int(self.allowed.sum())
        return min(int(self.eligible(r).sum()) for r in range(1, max(rounds, 1) + 1))

    def sample(self, rnd: int, at_s: float = 0.0, count: int | None = None) -> np.ndarray:
        """Sorted ids of ``count`` (default ``per_round``) clients sampled for round ``rnd``.

        Those eligible at simulated second ``at_s``; fewer when fewer are.
        """
        count = count or self.per_round
        mask = self.eligible(rnd, at_s)
        if mask.all():
            return np.sort(self.rng.choice(self.num_clients, min(count, self.num_clients), replace=False))
        ids = np.flatnonzero(mask)
        k = min(count, len(ids))
        return np.sort(self.rng.choice(ids, k, replace=False)) if k else ids

    def sample_excluding(self, rnd: int, n: int, busy: np.ndarray, at_s: float = 0.0) -> np.ndarray:
        """Sorted ids of ``n`` clients eligible in round ``rnd`` (at second ``at_s``) and not ``busy``.

        Fewer when fewer are left. An asynchronous server's draw: one client each time one arrives, from the same
        checkpointed stream.
        """
        mask = self.eligible(rnd, at_s).copy()
        mask[busy] = False
        ids = np.flatnonzero(mask)
        k = min(n, len(ids))
        return np.sort(self.rng.choice(ids, k, replace=False)) if k else ids[:0]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
