"""Krum and multi-Krum: keep the updates that sit closest to many others, drop the outliers whole.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
Each of the n clients is scored by the sum of squared L2 distances from its whole update to its n - f - 2
nearest others; Krum moves the model by the best-scored update, multi-Krum by the uniform mean of the m
best. Tolerates f Byzantine clients when n > 2f + 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError, Validated
from pocketlearn.federated.strategies.aggregate import weighted_means
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.updates import RoundUpdates


def pairwise_sq_distances(updates: RoundUpdates) -> Tensor:
    """(K, K) squared L2 distances between the clients' whole updates, in float64.

    Summed parameter by parameter (no (K, K, N) tensor); rows of parameters a client did not train are zero,
    so such a client is compared as if it left them unchanged.
    """
    k = len(updates)
    out = torch.zeros(k, k, dtype=torch.float64)
    for d in updates.deltas.values():  # d (K, *shape)
        flat = d.reshape(k, -1).double()  # (K, N)
        out += torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return out


def krum_scores(distances: Tensor, byzantine: int) -> Tensor:
    """(K,) Krum score: each client's sum of squared distances to its K - f - 2 nearest others."""
    k = len(distances)
    nearest = k - byzantine - 2
    others = distances + torch.diag(torch.full((k,), torch.inf, dtype=distances.dtype))  # never oneself
    return others.topk(nearest, dim=1, largest=False).values.sum(dim=1)


def krum_select(updates: RoundUpdates, byzantine: int, select: int) -> Tensor:
    """Indices (select,) of the best-scored clients, best first (ties go to the earlier client)."""
    scores = krum_scores(pairwise_sq_distances(updates), byzantine)
    return torch.argsort(scores, stable=True)[:select]


def _rows(updates: RoundUpdates, keep: Tensor) -> RoundUpdates:
    return RoundUpdates([updates.client_ids[i] for i in keep.tolist()], updates.num_samples[keep],
                        {n: d[keep] for n, d in updates.deltas.items()},
                        {n: m[keep] for n, m in updates.trained.items()})


@dataclass(frozen=True)
class MultiKrum(Validated, Strategy):
    """Move the model by the uniform mean of the ``select`` updates with the best Krum scores.

    ``byzantine`` = f, the malicious clients a round may hold; a round needs n > 2f + 2 clients.
    ``select`` = m, how many updates are averaged (default n - f: all but the f most isolated). Larger m
    averages away more honest noise; m = 1 is Krum. Unweighted, as in the paper: a client's sample count is
    its own claim and would let one liar outvote the rest.
    """

    name = "multi-krum"
    byzantine: int = 1
    select: int | None = None

    def problems(self) -> list[str]:
        out = []
        if not _count(self.byzantine, 0):
            out.append(f"byzantine should be a whole number >= 0 (the malicious clients a round may hold), "
                       f"got {self.byzantine!r}")
        if self.select is not None and not _count(self.select, 1):
            out.append(f"select should be a whole number >= 1 (the updates averaged) or left out for n - f, "
                       f"got {self.select!r}")
        return out

    def min_clients(self) -> int:
        """The fewest clients a round may have: n > 2f + 2, and at least ``select``."""
        return max(2 * self.byzantine + 3, self.select or 0)

    def check_round_size(self, n: int, where: str = "this round") -> None:
        """ConfigError unless ``n`` clients are enough to tolerate ``byzantine`` of them."""
        if n <= 2 * self.byzantine + 2:
            raise ConfigError(f"{self.name} needs n > 2f + 2 clients per round to tolerate f = {self.byzantine}; "
                              f"{where} gives n = {n}: lower byzantine to {max((n - 3) // 2, 0)} or use at least "
                              f"{2 * self.byzantine + 3} clients per round (dropouts and deadlines shrink a round)")
        if self.select is not None and self.select > n:
            raise ConfigError(f"{self.name}: select = {self.select} averages more updates than the n = {n} clients "
                              f"{where} gives; lower select to {n} or fewer")

    def apply(self, params: dict[str, Tensor], updates: RoundUpdates) -> None:
        n = len(updates)
        self.check_round_size(n)
        chosen = krum_select(updates, self.byzantine, self.select or n - self.byzantine)
        with torch.no_grad():
            for name, mean in weighted_means(_rows(updates, chosen), "uniform"):
                params[name].add_(mean.to(params[name]))


@dataclass(frozen=True)
class Krum(MultiKrum):
    """Move the model by the one update with the best Krum score (multi-Krum with m = 1).

    The most robust choice and the noisiest: each round keeps a single client's step, so on non-IID
    clients the model follows whichever client looked most typical.
    """

    name = "krum"
    select: int | None = field(default=1, init=False)


def _count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
