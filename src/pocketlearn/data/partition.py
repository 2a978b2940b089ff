"""Who holds which samples: IID, Dirichlet label skew, quantity skew, and natural per-user splits.

Every partitioner returns a :class:`Partition` of sorted sample indices, one array per client, each client
holding at least one sample. The Dirichlet split draws exactly as the anchor benchmarks do (per class in
label order: shuffle, Dirichlet proportions, cut; then empty clients take one sample from the largest), so
the same seed gives the same clients there and here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketlearn.errors import ConfigError

KINDS = ("iid", "dirichlet", "quantity", "natural")


@dataclass(frozen=True)
class Partition:
    indices: list[np.ndarray]  # sorted int64 sample indices per client
    names: list[str] | None = None  # user names for natural splits

    def __len__(self) -> int:
        return len(self.indices)


def _check(num_samples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > num_samples:
        raise ConfigError(f"{num_clients} clients but only {num_samples} samples: every client needs one; "
                          "lower data.num_clients")


def _fill_empty(buckets: list[list[int]]) -> list[np.ndarray]:
    """Give each empty client one sample from the currently largest client (lowest index on ties)."""
    for bucket in buckets:
        if not bucket:
            donor = max(range(len(buckets)), key=lambda j: len(buckets[j]))
            bucket.append(buckets[donor].pop())
    return [np.array(sorted(b), dtype=np.int64) for b in buckets]


def iid(num_samples: int, num_clients: int, seed: int = 0) -> Partition:
    _check(num_samples, num_clients)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return Partition([np.sort(p).astype(np.int64) for p in np.array_split(perm, num_clients)])


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0) -> Partition:
    """Label skew: each class spread over clients by Dirichlet(alpha) proportions (small alpha, few classes each)."""
    _check(len(labels), num_clients)
    if alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    buckets: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            buckets[client].extend(part.tolist())
    return Partition(_fill_empty(buckets))


def quantity_skew(num_samples: int, num_clients: int, alpha: float, seed: int = 0) -> Partition:
    """Quantity skew: client sizes from Dirichlet(alpha), labels IID (each client a random subset)."""
    _check(num_samples, num_clients)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    shares = rng.dirichlet(np.full(num_clients, alpha))
    sizes = 1 + np.floor(shares * (num_samples - num_clients)).astype(int)
    sizes[np.argmax(sizes)] += num_samples - sizes.sum()  # the rounding remainder
    return Partition([np.sort(p).astype(np.int64) for p in np.split(perm, np.cumsum(sizes)[:-1])])


def natural(user_ids: Sequence[Any]) -> Partition:
    """One client per distinct user, in order of first appearance."""
    users = np.asarray(user_ids)
    names, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return Partition([np.flatnonzero(inverse == i).astype(np.int64) for i in order], [str(names[i]) for i in order])


def make_partition(kind: str, labels: np.ndarray, num_clients: int, *, alpha: float = 0.5, seed: int = 0,
                   user_ids: Sequence[Any] | None = None) -> Partition:
    if kind == "iid":
        return iid(len(labels), num_clients, seed)
    if kind == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed)
    if kind == "quantity":
        return quantity_skew(len(labels), num_clients, alpha, seed)
    if kind == "natural":
        if user_ids is None:
            raise ConfigError("a natural partition needs a data set with users (shakespeare, hapt)")
        return natural(user_ids)
    raise ConfigError(f"unknown partition {kind!r}; choose one of {list(KINDS)}")


def partition_stats(partition: Partition, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Client sizes, and with labels how many classes a client sees and how far its mix is from the global one."""
    sizes = np.array([len(i) for i in partition.indices])
    stats: dict[str, Any] = {"clients": len(sizes), "samples": int(sizes.sum()), "min": int(sizes.min()),
                             "median": float(np.median(sizes)), "mean": float(sizes.mean()), "max": int(sizes.max())}
    if labels is not None and labels.ndim == 1:
        classes = int(labels.max()) + 1
        overall = np.bincount(labels, minlength=classes) / len(labels)
        mixes = [np.bincount(labels[i], minlength=classes) / len(i) for i in partition.indices]
        stats["classes_per_client"] = float(np.mean([(m > 0).sum() for m in mixes]))
        # mean total-variation distance between a client's label mix and the global one: 0 = IID, 1 = disjoint
        stats["label_skew_tv"] = float(np.mean([0.5 * np.abs(m - overall).sum() for m in mixes]))
    return stats


def save_stats(stats: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=1))
