"""Who masks with whom: all pairs (Bonawitz et al. 2017) or a random k-regular graph (SecAgg+).

SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead") masks and
shares secrets only along the edges of a random Harary graph of degree k = O(log n), so each client's work
and bytes grow with k instead of n.
"""

from __future__ import annotations

import math

import numpy as np

from pocketlearn.errors import ConfigError


def neighbour_graph(num_clients: int, degree: int | None = None, seed: int = 0) -> tuple[frozenset[int], ...]:
    """``graph[i]``: the clients i masks with. ``degree`` None (or ≥ n-1) gives the complete graph.

    Otherwise clients sit on a ring in a seeded random order and each links to its ``degree // 2`` nearest
    on either side: a circulant (Harary) graph, k-regular and connected.
    """
    if num_clients < 2:
        raise ConfigError(f"secure aggregation needs at least 2 clients, got {num_clients}")
    if degree is None or degree >= num_clients - 1:
        everyone = frozenset(range(num_clients))
        return tuple(everyone - {i} for i in range(num_clients))
    if degree < 2 or degree % 2:
        raise ConfigError(f"`neighbours` must be an even number ≥ 2 for a k-regular ring graph, got {degree}; "
                          f"try {max(2, degree + degree % 2)}")
    order = np.random.default_rng(seed).permutation(num_clients)
    graph: list[set[int]] = [set() for _ in range(num_clients)]
    for pos, i in enumerate(order):
        for step in range(1, degree // 2 + 1):
            j = int(order[(pos + step) % num_clients])
            graph[int(i)].add(j)
            graph[j].add(int(i))
    return tuple(frozenset(g) for g in graph)


def round_thresholds(fraction: float, num_clients: int, neighbours: int | None) -> tuple[int, int]:
    """The configured ``secagg.threshold`` for a round of ``num_clients``: (shares, survivors).

    ``fraction`` of a client's share holders (itself and its neighbours; everyone without SecAgg+) recover its
    secrets, and ``fraction`` of the round's clients must send masked inputs before the sum is unmasked. Both are
    relative, so one setting holds at every cohort size (as Flower's SecAgg+ relates its reconstruction
    threshold to its number of shares).
    """
    shares = math.ceil(fraction * share_holders(num_clients, neighbours))
    return max(1, shares), max(1, math.ceil(fraction * num_clients))


def share_holders(num_clients: int, neighbours: int | None) -> int:
    """How many hold shares of a client's secrets in a round of ``num_clients``: it and its neighbours."""
    return num_clients if neighbours is None else min(neighbours, num_clients - 1) + 1
