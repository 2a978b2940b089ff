"""The pure math of aggregation, per parameter and vectorised over clients; the strategies hold the state.

Every function skips a parameter that no client trained this round (it keeps its value), and aggregates a
partly trained one over the clients whose ``trained`` row is set.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError
from pocketlearn.federated.updates import RoundUpdates

_TINY = torch.finfo(torch.float32).tiny


def client_weights(updates: RoundUpdates, weighting: str) -> Tensor:
    """(K,) weight of each client: its sample count, or 1 for every client."""
    return updates.num_samples if weighting == "samples" else torch.ones_like(updates.num_samples)


def weighted_means(updates: RoundUpdates, weighting: str) -> Iterator[tuple[str, Tensor]]:
    """(name, mean delta (*shape)) for each parameter some client trained, weighted over those clients."""
    weights = client_weights(updates, weighting)
    shared: Tensor | None = None  # normalised weights of the parameters every client trained
    for name, d in updates.deltas.items():  # d (K, *shape)
        mask = updates.trained.get(name)
        if mask is None:
            if shared is None:
                shared = weights / weights.sum().clamp_min(_TINY)
            w = shared
        else:
            if not mask.any():
                continue
            w = weights * mask.to(weights.device)
            w = w / w.sum().clamp_min(_TINY)
        yield name, (w.to(d) @ d.reshape(len(d), -1)).view(d.shape[1:])  # (K,) @ (K, N) -> (N,)


def trained_rows(updates: RoundUpdates) -> Iterator[tuple[str, Tensor]]:
    """(name, deltas (n, *shape) of the n >= 1 clients that trained it) for each trained parameter."""
    for name in updates.deltas:
        rows, _ = updates.rows(name)
        if len(rows):
            yield name, rows


def coordinate_median(rows: Tensor) -> Tensor:
    """Per-coordinate median of (n, *shape) rows; the mean of the two middle values when n is even."""
    lower = rows.median(dim=0).values  # selection, not a sort: several times faster on CPU
    if len(rows) % 2:
        return lower
    return (lower - rows.neg().median(dim=0).values) / 2  # -median(-x) is the upper middle value


def trim_count(n: int, fraction: float) -> int:
    """⌊fraction·n⌋, the values dropped at each end (the epsilon keeps 0.29·100 at 29, not 28)."""
    return int(fraction * n + 1e-9)


def trimmed_mean(rows: Tensor, fraction: float) -> Tensor:
    """Per-coordinate mean of (n, *shape) rows without the ⌊fraction·n⌋ largest and smallest values.

    With low/high the smallest/largest kept values, clamping to [low, high] turns each dropped value into low
    or high, so the kept sum is sum(clamp) - t·(low + high): exact with ties, and no huge outlier enters a sum.
    """
    n = len(rows)
    t = trim_count(n, fraction)
    if n - 2 * t < 1:
        raise ConfigError(f"trim_fraction {fraction} drops {t} of {n} values at each end and leaves none; use a "
                          "trim_fraction below 0.5")
    if t == 0:
        return rows.mean(dim=0)
    low = rows.topk(t + 1, dim=0, largest=False).values[t]  # (*shape)
    high = rows.topk(t + 1, dim=0).values[t]
    return (rows.clamp(low, high).sum(dim=0) - t * (low + high)) / (n - 2 * t)
