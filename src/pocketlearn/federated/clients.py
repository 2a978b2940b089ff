"""A population's data: which samples each client holds, made when the client is sampled.

A partition of a loaded data set lists every client's samples up front (:class:`InMemoryClients`). A lazy
population derives a client's samples from (seed, client id) when a round asks for it, so memory and round
time follow the cohort, not the population: :class:`ResampledClients` draws each client's samples with
replacement from a data set (Dirichlet label mix, lognormal size), so there may be more clients than samples;
:class:`SyntheticClients` generates each client's own data (LEAF's Synthetic(α, β)).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from pocketlearn.data.synthetic import Synthetic
from pocketlearn.errors import ConfigError


@dataclass(frozen=True)
class Cohort:
    """Some clients' samples: client k of the cohort holds rows ``indices[k]`` of ``x`` and ``y``."""

    x: Tensor
    y: Tensor
    indices: list[np.ndarray]


class ClientData(Protocol):
    """Every client's samples, given on demand for the clients of a round."""

    @property
    def sizes(self) -> np.ndarray: ...  # (N,) samples per client

    def __len__(self) -> int: ...

    def take(self, client_ids: Sequence[int]) -> Cohort: ...

    def example(self, n: int) -> tuple[Tensor, Tensor]: ...  # a batch of n samples: shapes and dtypes


@dataclass(frozen=True, eq=False)
class InMemoryClients:
    """A loaded data set and each client's sample indices into it (``indices`` may compute them on demand)."""

    x: Tensor
    y: Tensor
    indices: Sequence[np.ndarray]

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.indices), dtype=np.int64, count=len(self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, client_ids: Sequence[int]) -> Cohort:
        return Cohort(self.x, self.y, [np.asarray(self.indices[int(c)]) for c in client_ids])

    def example(self, n: int) -> tuple[Tensor, Tensor]:
        return self.x[:n], self.y[:n]


def client_sizes(num_clients: int, mean: float, sigma: float, seed: int) -> np.ndarray:
    """Samples per client, LogNormal with the given mean and log-spread (each at least 1), int32.

    One vectorized draw for the whole population (a million clients: 4 MB, milliseconds).
    """
    if not mean >= 1:
        raise ConfigError(f"data.mean_size must be at least 1 (samples per client), got {mean}")
    draws = np.random.default_rng([seed, 1]).lognormal(np.log(mean) - sigma**2 / 2, sigma, num_clients)
    return np.maximum(1, np.rint(draws)).astype(np.int32)


@dataclass(frozen=True, eq=False)
class ResampledClients:
    """Clients whose samples are drawn with replacement from a data set, each from (seed, client id).

    A client's label mix is Dirichlet(``alpha``) over the classes (uniform over samples when the targets are
    not class labels, e.g. a language model's tokens) and its size comes from :func:`client_sizes`.
    """

    x: Tensor
    y: Tensor
    num_clients: int
    alpha: float
    mean_size: float
    sigma: float
    seed: int
    _pools: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_clients < 1 or len(self.x) < 1:
            raise ConfigError(f"a resampled population needs at least one client and one sample, got "
                              f"{self.num_clients} clients over {len(self.x)} samples")
        labels = self.y.numpy() if self.y.dim() == 1 else np.zeros(len(self.y), dtype=np.int64)
        pools = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        object.__setattr__(self, "_pools", pools)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        return client_sizes(self.num_clients, self.mean_size, self.sigma, self.seed)

    def __len__(self) -> int:
        return self.num_clients

    def indices_of(self, client: int) -> np.ndarray:
        """Client ``client``'s sample indices (with repeats), the same every time it is asked for."""
        rng = np.random.default_rng([self.seed, 2, client])
        counts = rng.multinomial(int(self.sizes[client]), rng.dirichlet(np.full(len(self._pools), self.alpha)))
        return np.concatenate([pool[rng.integers(0, len(pool), n)] for pool, n in zip(self._pools, counts,
                                                                                      strict=True) if n])

    def take(self, client_ids: Sequence[int]) -> Cohort:
        return Cohort(self.x, self.y, [self.indices_of(int(c)) for c in client_ids])

    def example(self, n: int) -> tuple[Tensor, Tensor]:
        return self.x[:n], self.y[:n]


@dataclass(frozen=True, eq=False)
class SyntheticClients:
    """LEAF's Synthetic(α, β) population: each client's own samples, generated when it is sampled."""

    source: Synthetic
    num_clients: int
    mean_size: float
    sigma: float

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        return client_sizes(self.num_clients, self.mean_size, self.sigma, self.source.seed)

    def __len__(self) -> int:
        return self.num_clients

    def take(self, client_ids: Sequence[int]) -> Cohort:
        parts = [self.source.samples(int(c), int(self.sizes[int(c)])) for c in client_ids]
        ends = np.cumsum([len(p[1]) for p in parts])
        x = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, *self.example(1)[0].shape[1:])
        y = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, dtype=torch.long)
        return Cohort(x, y, [np.arange(e - len(p[1]), e) for e, p in zip(ends, parts, strict=True)])

    def example(self, n: int) -> tuple[Tensor, Tensor]:
        return self.source.samples(0, n)


def client_stats(clients: ClientData) -> dict[str, Any]:
    """The split's statistics: client sizes for any population, label skew too for a loaded split."""
    from pocketlearn.data.partition import Partition, partition_stats, size_stats

    if isinstance(clients, InMemoryClients):
        labels = clients.y.numpy() if clients.y.dim() == 1 else None
        return partition_stats(Partition(list(clients.indices)), labels)
    return size_stats(clients.sizes)
