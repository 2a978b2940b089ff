"""Asynchronous buffered aggregation (FedBuff; Nguyen et al., AISTATS 2022) on a simulated clock.

There are no rounds: ``concurrency`` clients are always training, each on the model version it downloaded, and
each arrives after its device's simulated time (download, train on its compute, upload). The server applies its
strategy to every ``buffer`` arrivals, an update ``tau`` versions old weighing ``(1 + tau) ** -staleness``
(FedBuff's polynomial discount), and a new client starts whenever one arrives. A client that drops out
(``devices.dropout``) or would take longer than ``devices.deadline_s`` never arrives: the server gives up on it
after the deadline (or its own time) and starts another. One server update is one line of
``metrics.jsonl`` (``round`` is the model version, ``clock_s`` the simulated time it happened).

Clients that downloaded the same version train together in one batched engine call, when the first of them
could arrive: the result is what each would have computed alone, and the batching keeps the simulator fast.
Until then a client's arrival is its earliest possible one (download and compute, no upload); training gives
each its real payload (a compressed update, MeZO's seeds) and so its exact upload time, and only a client
whose exact arrival comes first is taken into the buffer.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import TrainingError
from pocketlearn.federated.codecs import dense_size
from pocketlearn.federated.pipeline import Arrived
from pocketlearn.federated.server import FederatedServer, RoundRecord, downlink_payload
from pocketlearn.federated.updates import RoundUpdates

# A server update gives up after this many times `concurrency` clients in a row were lost (none can finish).
LOST_LIMIT = 20


@dataclass(frozen=True)
class BufferSettings:
    """FedBuff's knobs: arrivals per server update, clients training at once, staleness discount."""

    buffer: int
    concurrency: int
    staleness: float = 0.5

    def weight(self, tau: int) -> float:
        """How much an update ``tau`` versions old counts, relative to a fresh one."""
        return float((1.0 + tau) ** -self.staleness)


@dataclass
class Flight:
    """One client's task: the version it trains on, when it started and when it arrives (simulated seconds)."""

    client: int
    version: int
    start_s: float
    finish_s: float
    delta: dict[str, Tensor] | None = None  # set when its version's batch is trained
    lost: str = ""  # "dropped" out, or "late" past the deadline: at ``finish_s`` the server stops waiting for it
    samples: int = 0
    loss: float = 0.0
    up_bytes: int = 0


@dataclass
class _Waiting:
    """Clients in flight (by arrival), and the weights of each version some of them have yet to train on."""

    flights: list[Flight] = field(default_factory=list)
    versions: dict[int, dict[str, Tensor]] = field(default_factory=dict)


class BufferedServer(FederatedServer):
    """A :class:`FederatedServer` whose ``run_round`` is one FedBuff server update (``buffer`` arrivals)."""

    def __init__(self, *args: Any, settings: BufferSettings, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.waiting = _Waiting()
        self._up_bytes = dense_size({n: tuple(p.shape) for n, p in self.params.items()})
        self._down_bytes = len(downlink_payload(self.params, self.policy.downlink, self.policy.codec_seed, 0))

    # --- one server update ------------------------------------------------------------------------------
    def run_round(self) -> RoundRecord:
        rnd, started = self.round + 1, time.perf_counter()
        clock_before = self.clock_s
        launched = self._fill(self.settings.concurrency - len(self.waiting.flights))
        arrived: list[Flight] = []
        lost = {"dropped": 0, "late": 0}
        while len(arrived) < self.settings.buffer:
            if not self.waiting.flights:  # nobody could start (a trace's quiet hours): wait for someone
                self.wait_for_available(rnd)
                launched += self._fill(self.settings.concurrency)
                if not self.waiting.flights:
                    raise TrainingError(f"server update {rnd}: no client could start (none eligible); check "
                                        "devices.mix and devices.availability")
            flight = self.waiting.flights.pop(0)
            if flight.delta is None and not flight.lost:  # its earliest arrival came up: train to know the real one
                self._train_version(flight, flight.version)
                continue
            self.clock_s = flight.finish_s
            if flight.lost:
                lost[flight.lost] += 1
                if sum(lost.values()) > LOST_LIMIT * self.settings.concurrency:
                    raise TrainingError(
                        f"server update {rnd}: {lost['dropped']} clients dropped out and {lost['late']} missed "
                        f"devices.deadline_s = {self.policy.deadline_s} before {self.settings.buffer} arrived; "
                        "raise the deadline or lower devices.dropout")
            else:
                arrived.append(flight)
            if len(arrived) < self.settings.buffer:  # its replacement downloads the version not yet updated
                launched += self._fill(1)
        applied = self._aggregate(self._buffered(arrived, rnd))
        self.round = rnd
        launched += self._fill(1)  # the last arrival's replacement gets the new version
        self._forget_versions()
        record = RoundRecord(
            rnd, launched, applied.finished, lost["dropped"], lost["late"], sum(f.up_bytes for f in arrived),
            self._down_bytes * launched, self.clock_s - clock_before, time.perf_counter() - started,
            float(np.mean([f.loss for f in arrived])), by_method={self.local.method: len(arrived)},
            clock_s=self.clock_s, failed=applied.failure)
        if rnd % self.policy.eval_every == 0 or rnd == self.last_round:
            record.eval = self.evaluate(self.model)
        return record

    def _fill(self, n: int) -> int:
        """Start ``n`` clients (not already in flight) on the current version; returns how many started."""
        if n <= 0:
            return 0
        busy = np.array([f.client for f in self.waiting.flights], dtype=np.int64)
        chosen = self.sampler.sample_excluding(self.round + 1, n, busy, self.clock_s)
        if len(chosen) and self.round not in self.waiting.versions:
            self.waiting.versions[self.round] = {k: p.detach().clone() for k, p in self.params.items()}
        deadline, dropout = self.policy.deadline_s, self.policy.dropout
        for c in chosen:
            earliest = self._seconds(int(c), up_bytes=0)
            drops = dropout > 0 and np.random.default_rng([self.policy.seed, self.round, int(c)]).random() < dropout
            late = deadline is not None and earliest > deadline
            if drops or late:  # the server hears nothing and gives up on it after the deadline (or its own time)
                duration = self._seconds(int(c), up_bytes=self._up_bytes)
                earliest = min(duration, deadline) if deadline is not None else duration
            flight = Flight(int(c), self.round, self.clock_s, self.clock_s + earliest,
                            lost="dropped" if drops else "late" if late else "")
            bisect.insort(self.waiting.flights, flight, key=_arrival_order)
        return len(chosen)

    def _seconds(self, client: int, up_bytes: int) -> float:
        """``client``'s simulated time for one task on the current model: download, train, upload ``up_bytes``."""
        return self.clients.seconds(client, samples=int(self.clients.sizes[client]) * self.local.epochs,
                                    down_bytes=self._down_bytes, up_bytes=up_bytes)

    def _train_version(self, first: Flight, version: int) -> None:
        """Train ``first`` and every other client still waiting on ``version``, together.

        Each goes back in flight at its exact arrival (its real upload), or lost as late if that misses the deadline.
        """
        todo = [first] + [f for f in self.waiting.flights if f.version == version and f.delta is None and not f.lost]
        todo.sort(key=lambda f: f.client)
        start = self.waiting.versions[version]
        method = self.local.method
        weights = downlink_payload(start, self.policy.downlink, self.policy.codec_seed, version + 1)
        plan = self._plan(method, [f.client for f in todo], version + 1, weights, start, None)
        result = self.engine.run(start, plan)
        updates, sizes = self._uplink(method).send(result, version + 1, start, None)
        for k, flight in enumerate(todo):
            flight.delta = {n: d.clone() for n, d in updates.client_delta(k).items()}
            flight.samples, flight.up_bytes = int(updates.num_samples[k]), int(sizes[k])
            flight.loss = float(result.train_loss[k])
            duration, deadline = self._seconds(flight.client, up_bytes=flight.up_bytes), self.policy.deadline_s
            if deadline is not None and duration > deadline:
                flight.lost, flight.delta, duration = "late", None, deadline
            flight.finish_s = flight.start_s + duration
        self.waiting.flights.append(first)
        self.waiting.flights.sort(key=_arrival_order)

    def _buffered(self, arrived: list[Flight], rnd: int) -> Arrived:
        """The buffer as one round's updates, each scaled by its staleness weight."""
        names = list(arrived[0].delta or {})
        scale = [self.settings.weight(self.round - f.version) for f in arrived]
        deltas = {n: torch.stack([f.delta[n] * s for f, s in zip(arrived, scale, strict=True)  # type: ignore[index]
                                  ]) for n in names}
        samples = torch.tensor([float(f.samples) for f in arrived])
        return Arrived(rnd, RoundUpdates([f.client for f in arrived], samples, deltas), [])

    def _forget_versions(self) -> None:
        """Drop the weights of versions no waiting client still has to train on."""
        needed = {f.version for f in self.waiting.flights if f.delta is None and not f.lost} | {self.round}
        for v in [v for v in self.waiting.versions if v not in needed]:
            del self.waiting.versions[v]

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "flights": [vars(f) for f in self.waiting.flights],
                "versions": self.waiting.versions}

    def load_state(self, state: dict[str, Any]) -> None:
        self.waiting = _Waiting([Flight(**f) for f in state["flights"]], dict(state["versions"]))


def buffer_problems(config: Any) -> list[str]:
    """Why a config cannot run asynchronously (empty: it can), each naming the key to change."""
    problems = []
    concurrency = config.asynchronous.concurrency or config.clients_per_round
    if config.asynchronous.buffer > concurrency:
        problems.append(f"{config.asynchronous.buffer} arrivals per update, but only {concurrency} clients train at "
                        "once (asynchronous.concurrency, or clients_per_round): a buffer can never fill; lower "
                        "buffer or raise concurrency")
    if config.secagg.enabled:
        problems.append("secagg: secure aggregation masks a cohort known in advance; FedBuff's buffer is not "
                        "one: set secagg.enabled = false")
    if config.strategy.name == "dp-fedavg":
        problems.append("strategy dp-fedavg: its accountant assumes rounds of clients sampled without "
                        "replacement; pick fedavg or a FedOpt strategy with asynchronous.buffer")
    if config.client.method == "auto" or config.client.methods:
        problems.append("client.method: a mixed-method run needs rounds; pin one method")
    if config.devices.overselect:
        problems.append("devices.overselect: FedBuff has no rounds to close early; its buffer already takes the "
                        "first arrivals: leave overselect at 0")
    return problems


def _arrival_order(flight: Flight) -> tuple[float, float, int]:
    """Flights by arrival; ties: the earlier start, then the lower client id."""
    return flight.finish_s, flight.start_s, flight.client
