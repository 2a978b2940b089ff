"""Who holds which samples: IID, Dirichlet label skew, quantity skew, and natural per-user splits.

Every partitioner returns a :class:`Partition` of sorted sample indices, one array per client, each client
holding at least one sample. The Dirichlet split draws exactly as the anchor benchmarks do (per class in
label order: shuffle, Dirichlet proportions, cut; then empty clients take one sample from the largest), so
the same seed gives the same clients there and here.
Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated Visual Classification", 2019.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketlearn.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rich.table import Table

KINDS = ("iid", "dirichlet", "quantity", "lognormal", "natural")


@dataclass(frozen=True)
class Partition:
    """Client k holds samples ``indices[k]``; ``names[k]`` says who it is when the split is natural."""

    indices: list[np.ndarray]  # sorted int64 sample indices per client
    names: list[str] | None = None  # user names for natural splits

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client, (num_clients,) int64."""
        return np.array([len(i) for i in self.indices], dtype=np.int64)


def _check(num_samples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > num_samples:
        raise ConfigError(f"{num_clients} clients but only {num_samples} samples: every client needs one; "
                          "lower data.num_clients")


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ConfigError(f"Dirichlet alpha must be positive, got {alpha}; smaller means more skew (try 0.5)")


def _fill_empty(buckets: list[list[int]]) -> list[np.ndarray]:
    """Give each empty client one sample from the currently largest client (lowest index on ties)."""
    for bucket in buckets:
        if not bucket:
            donor = max(range(len(buckets)), key=lambda j: len(buckets[j]))
            bucket.append(buckets[donor].pop())
    return [np.array(sorted(b), dtype=np.int64) for b in buckets]


def iid(num_samples: int, num_clients: int, seed: int = 0) -> Partition:
    """Shuffled equal split (sizes differ by at most one): the baseline every skewed split is compared with."""
    _check(num_samples, num_clients)
    perm = np.random.default_rng(seed).permutation(num_samples)
    return Partition([np.sort(p).astype(np.int64) for p in np.array_split(perm, num_clients)])


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0) -> Partition:
    """Label skew: each class spread over clients by Dirichlet(alpha) proportions (small alpha, few classes each)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"a label-skew split needs one class label per sample, got labels of shape {labels.shape}")
    _check(len(labels), num_clients)
    _check_alpha(alpha)
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
    """Quantity skew: client sizes from Dirichlet(alpha) (each at least 1), labels IID (each a random subset)."""
    _check(num_samples, num_clients)
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    return _split_by_shares(perm, rng.dirichlet(np.full(num_clients, alpha)))


def lognormal_sizes(num_samples: int, num_clients: int, sigma: float, seed: int = 0) -> Partition:
    """Heavy-tailed client sizes: shares drawn from LogNormal(0, sigma) (each client at least 1), labels IID.

    sigma 1.5 gives clients from a handful to several thousand samples out of 60,000, as real device
    populations have (a few heavy users, many light ones).
    """
    _check(num_samples, num_clients)
    if not sigma > 0:
        raise ConfigError(f"sigma must be positive (the spread of log client sizes), got {sigma}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    weights = rng.lognormal(0.0, sigma, num_clients)
    return _split_by_shares(perm, weights / weights.sum())


def _split_by_shares(perm: np.ndarray, shares: np.ndarray) -> Partition:
    """``perm`` cut into one part per share (each at least 1 sample; the remainder to the largest)."""
    num_samples, num_clients = len(perm), len(shares)
    sizes = 1 + np.floor(shares * (num_samples - num_clients)).astype(int)
    sizes[np.argmax(sizes)] += num_samples - sizes.sum()  # the rounding remainder
    return Partition([np.sort(p).astype(np.int64) for p in np.split(perm, np.cumsum(sizes)[:-1])])


def natural(user_ids: Sequence[Any] | np.ndarray) -> Partition:
    """One client per distinct user, in order of first appearance: the split real devices would have."""
    users = np.asarray(user_ids)
    if users.ndim != 1 or len(users) == 0:
        raise DataError(f"a natural split needs one user id per sample, got {len(users)} ids of shape {users.shape}")
    names, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return Partition([np.flatnonzero(inverse == i).astype(np.int64) for i in order], [str(names[i]) for i in order])


def make_partition(kind: str, labels: np.ndarray, num_clients: int, *, alpha: float = 0.5, seed: int = 0,
                   user_ids: Sequence[Any] | np.ndarray | None = None, sigma: float = 1.5) -> Partition:
    """Partition by name, as configs and the CLI name it; ``natural`` takes its clients from ``user_ids``."""
    if kind == "iid":
        return iid(len(labels), num_clients, seed)
    if kind == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed)
    if kind == "quantity":
        return quantity_skew(len(labels), num_clients, alpha, seed)
    if kind == "lognormal":
        return lognormal_sizes(len(labels), num_clients, sigma, seed)
    if kind == "natural":
        if user_ids is None:
            raise ConfigError("a natural partition needs a data set with users (shakespeare, hapt)")
        return natural(user_ids)
    raise ConfigError(f"unknown partition {kind!r}; choose one of {list(KINDS)}")


def _label_stats(partition: Partition, labels: np.ndarray) -> dict[str, float]:
    """Classes a client sees, and the mean total-variation distance of its label mix from the global one."""
    classes, codes = np.unique(labels, return_inverse=True)
    overall = np.bincount(codes, minlength=len(classes)) / len(codes)  # (C,)
    mixes = np.stack([np.bincount(codes[i], minlength=len(classes)) / len(i) for i in partition.indices])  # (K, C)
    return {"classes_per_client": float((mixes > 0).sum(1).mean()),
            "label_skew_tv": float(0.5 * np.abs(mixes - overall).sum(1).mean())}  # 0 = IID, ->1 = disjoint


def size_stats(sizes: np.ndarray) -> dict[str, Any]:
    """How many clients, and how many samples each holds (min, median, mean, max)."""
    if not len(sizes):
        raise DataError("a partition with no clients has no statistics")
    return {"clients": len(sizes), "samples": int(sizes.sum()), "min": int(sizes.min()),
            "median": float(np.median(sizes)), "mean": float(sizes.mean()), "max": int(sizes.max())}


def partition_stats(partition: Partition, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Client sizes, and with class labels how many classes a client sees and how far its mix is from the whole."""
    stats = size_stats(partition.sizes)
    if labels is not None and np.ndim(labels) == 1:
        stats |= _label_stats(partition, np.asarray(labels))
    return stats


def save_stats(stats: dict[str, Any], path: Path) -> None:
    """Write the statistics as JSON next to a run, so a report can say what split the run trained on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, indent=1))


_LABELS = {"clients": "clients", "samples": "samples in all", "min": "samples per client, min",
           "median": "samples per client, median", "mean": "samples per client, mean",
           "max": "samples per client, max", "classes_per_client": "classes per client, mean",
           "label_skew_tv": "label skew (TV distance, 0 = IID)"}


def stats_table(stats: dict[str, Any], title: str = "partition") -> Table:
    """The statistics as a two-column rich table for the CLI, each row in words."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(_LABELS.get(key, key), f"{value:,.3f}" if isinstance(value, float) else f"{value:,}")
    return table
