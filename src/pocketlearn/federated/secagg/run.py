"""A whole secure-aggregation round in one process: the front door for the engine, and its measured cost."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError
from pocketlearn.federated.updates import RoundUpdates

from .field import FieldSpec
from .graph import neighbour_graph, round_thresholds
from .protocol import SecAggClient, SecAggConfig, SecAggServer

T = TypeVar("T")


@dataclass
class Ledger:
    """Per-client bytes sent and received (from serialized messages) and seconds spent; server seconds."""

    sent: np.ndarray
    received: np.ndarray
    seconds: np.ndarray
    server_seconds: float = 0.0

    @classmethod
    def empty(cls, n: int) -> Ledger:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n))


class _Clock:
    """Calls a party's method and charges its wall time to that party in the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def client(self, u: int, fn: Callable[..., T], *args: Any) -> T:
        t = time.perf_counter()
        out = fn(*args)
        self.ledger.seconds[u] += time.perf_counter() - t
        return out

    def server(self, fn: Callable[..., T], *args: Any) -> T:
        t = time.perf_counter()
        out = fn(*args)
        self.ledger.server_seconds += time.perf_counter() - t
        return out


def run_round(vectors: Sequence[np.ndarray], config: SecAggConfig, *, drop_after_masking: Collection[int] = (),
              drop_before_unmasking: Collection[int] = (), ledger: Ledger | None = None) -> np.ndarray:
    """Run the four rounds for clients 0..n-1 and return the float sum of the survivors' vectors.

    ``drop_after_masking``: clients that shared keys (so the others mask with them) but whose masked input
    never arrives. ``drop_before_unmasking``: survivors that go silent in the last round (their input counts,
    their shares of others' secrets are missing).
    """
    n = config.num_clients
    ledger = ledger if ledger is not None else Ledger.empty(n)
    clock = _Clock(ledger)
    server = SecAggServer(config)
    clients = [SecAggClient(u, config) for u in range(n)]
    adverts = [clock.client(c.id, c.advertise) for c in clients]
    for a in adverts:
        ledger.sent[a.client] += len(a.to_bytes())
    routed = clock.server(server.receive_adverts, adverts)
    shares = []
    for c in clients:
        ledger.received[c.id] += sum(len(a.to_bytes()) for a in routed[c.id].values())
        shares.append(clock.client(c.id, c.share_keys, routed[c.id]))
        ledger.sent[c.id] += len(shares[-1].to_bytes())
    inbox = clock.server(server.route_shares, shares)
    for c in clients:
        ledger.received[c.id] += sum(len(e.to_bytes()) for e in inbox[c.id])
        y = clock.client(c.id, c.masked_input, vectors[c.id], inbox[c.id])
        if c.id not in drop_after_masking:
            ledger.sent[c.id] += len(y.to_bytes())
            clock.server(server.receive_masked, y)
    request = clock.server(server.unmask_request)
    responses = []
    for u in sorted(request.survivors - set(drop_before_unmasking)):
        ledger.received[u] += len(request.to_bytes())
        responses.append(clock.client(u, clients[u].unmask_shares, request.survivors, request.dropped))
        ledger.sent[u] += len(responses[-1].to_bytes())
    return clock.server(server.aggregate, responses)


def _as_numpy(v: np.ndarray | Tensor) -> np.ndarray:
    return v.detach().cpu().double().numpy() if isinstance(v, Tensor) else np.asarray(v, dtype=np.float64)


def secure_sum(vectors: Sequence[np.ndarray | Tensor], *, threshold: int, clip: float,
               drop_after_masking: Collection[int] = frozenset(), drop_before_unmasking: Collection[int] = frozenset(),
               neighbours: int | None = None, seed: int = 0, bits: int = 32, ledger: Ledger | None = None,
               min_survivors: int = 0) -> np.ndarray:
    """The sum of the vectors of clients not in ``drop_after_masking``, computed by secure aggregation.

    Values are clipped to [-clip, clip] and the result is exact up to ``FieldSpec.max_error``. ``neighbours``
    (even) switches from all pairs to a SecAgg+ k-regular graph; ``seed`` draws that graph (keys and masks
    always come from the OS). Raises ``SecAggError`` if too many clients drop out for ``threshold`` (shares of a
    client's secrets) or ``min_survivors`` (masked inputs).
    """
    arrays = [_as_numpy(v) for v in vectors]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ConfigError(f"all vectors must have one shape, got {sorted(shapes)}")
    config = SecAggConfig(threshold, FieldSpec(clip, len(arrays), bits), arrays[0].size,
                          neighbour_graph(len(arrays), neighbours, seed), min_survivors)
    total = run_round(arrays, config, drop_after_masking=frozenset(drop_after_masking),
                      drop_before_unmasking=frozenset(drop_before_unmasking), ledger=ledger)
    return total.reshape(arrays[0].shape)


def secure_sum_deltas(updates: RoundUpdates, *, threshold: int, clip: float,
                      drop_after_masking: Collection[int] = frozenset(), neighbours: int | None = None,
                      seed: int = 0, ledger: Ledger | None = None, min_survivors: int = 0) -> dict[str, Tensor]:
    """:func:`secure_sum` of a round's stacked deltas: each parameter's (*shape) sum over the clients.

    ``drop_after_masking`` holds row positions in ``updates``. Rows of clients that did not train a
    parameter are zero, so they add nothing; weighting (by ``num_samples``, say) is the caller's, before.
    """
    names = sorted(updates.deltas)
    flat = torch.cat([updates.deltas[n].flatten(1) for n in names], dim=1)  # (K, D)
    total = torch.from_numpy(secure_sum(list(flat), threshold=threshold, clip=clip, neighbours=neighbours,
                                        drop_after_masking=drop_after_masking, seed=seed, ledger=ledger,
                                        min_survivors=min_survivors))
    sizes = [updates.deltas[n][0].numel() for n in names]
    return {n: part.view(updates.deltas[n].shape[1:]).to(updates.deltas[n].dtype)
            for n, part in zip(names, total.split(sizes), strict=True)}


def secure_mean(updates: RoundUpdates, *, threshold: float, clip: float, neighbours: int | None = None,
                seed: int = 0) -> tuple[RoundUpdates, Ledger]:
    """The sample-weighted mean delta by secure aggregation, as one row; the protocol's bytes in the ledger.

    Weighting happens on the clients, before masking (``updates`` is scaled in place); ``threshold`` is the
    configured fraction (:func:`round_thresholds`).
    """
    updates.scale_clients(updates.num_samples / updates.num_samples.sum())
    ledger = Ledger.empty(len(updates))
    shares, survivors = round_thresholds(threshold, len(updates), neighbours)
    total = secure_sum_deltas(updates, threshold=shares, clip=clip, neighbours=neighbours, seed=seed, ledger=ledger,
                              min_survivors=survivors)
    mean = RoundUpdates([-1], updates.num_samples.sum().view(1), {n: t.unsqueeze(0) for n, t in total.items()})
    return mean, ledger


@dataclass(frozen=True)
class SecAggCost:
    """What one round costs each client, against sending its float32 vector in the clear."""

    num_clients: int
    vector_size: int
    neighbours: int
    threshold: int
    plain_bytes: int  # the float32 vector alone
    sent_bytes: float  # mean over the clients that finished the round
    received_bytes: float  # likewise, the model download excluded
    client_seconds: float  # likewise
    server_seconds: float

    @property
    def extra_sent_bytes(self) -> float:
        return self.sent_bytes - self.plain_bytes


def measure_cost(num_clients: int, vector_size: int, *, neighbours: int | None = None,
                 threshold: int | None = None, drop_fraction: float = 0.0, seed: int = 0) -> SecAggCost:
    """Run one round on random vectors and return its per-client bytes and seconds.

    ``threshold`` defaults to a majority of each client's share holders; ``drop_fraction`` of the clients
    drop after masking, so the server's recovery work is in the figure.
    """
    rng = np.random.default_rng(seed)
    graph = neighbour_graph(num_clients, neighbours, seed)
    degree = min(len(g) for g in graph)
    t = threshold if threshold is not None else (degree + 1) // 2 + 1
    config = SecAggConfig(t, FieldSpec(1.0, num_clients), vector_size, graph)
    vectors = list(rng.uniform(-1, 1, (num_clients, vector_size)))
    dropped = set(rng.choice(num_clients, int(drop_fraction * num_clients), replace=False).tolist())
    ledger = Ledger.empty(num_clients)
    run_round(vectors, config, drop_after_masking=dropped, ledger=ledger)
    done = np.setdiff1d(np.arange(num_clients), sorted(dropped))
    return SecAggCost(num_clients, vector_size, degree, t, 4 * vector_size, float(ledger.sent[done].mean()),
                      float(ledger.received[done].mean()), float(ledger.seconds[done].mean()),
                      ledger.server_seconds)
