"""The Ray engine: a round's clients split across Ray actors, on this machine's cores or a cluster.

Each actor holds the clients' data once (a lazy population: only its recipe) and runs the in-process engine on
its share of the clients, so a client trains exactly as it would in-process (same visiting order, same batched
arithmetic): the same seed gives the same global model with either engine. ``RAY_ADDRESS``
(``--address HOST:PORT``) joins a running cluster; without it a local Ray starts with this machine's CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.errors import ConfigError, TrainingError
from pocketlearn.federated.clients import ClientData
from pocketlearn.federated.round import InTheClear, Payloads, RoundResult, SeedPairs, SimulatedEngine, Wire
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.federated.updates import RoundUpdates


def _ray():  # type: ignore[no-untyped-def]
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs to hide; silences a warning
    try:
        import ray
    except ImportError:
        raise ConfigError("engine = 'ray' needs Ray: pip install 'ray==2.55.1'") from None
    return ray


class _Worker:
    """Runs in a Ray actor: an in-process engine over the shared data."""

    def __init__(self, template: nn.Module, clients: ClientData, vectorize: bool, threads: int):
        torch.set_num_threads(threads)
        self.engine = InProcessEngine(template, clients, vectorize=vectorize)

    def train(self, params: dict[str, Tensor], client_ids: list[int], rnd: int, local: LocalTraining
              ) -> RoundResult:
        result = self.engine.train(params, client_ids, rnd, local)
        # the stacked buffers are reused next round: send copies; every other field travels as it is (MeZO
        # histories carry seed exchange, so dropping them would silently turn it into dense uploads)
        u = result.updates
        updates = RoundUpdates(u.client_ids, u.num_samples, {n: d.clone() for n, d in u.deltas.items()}, u.trained)
        return replace(result, updates=updates)


class RayEngine(SimulatedEngine):
    """Same interface as :class:`InProcessEngine`; clients are spread over ``num_workers`` actors."""

    def __init__(self, template: nn.Module, clients: ClientData, *, vectorize: bool = True,
                 num_workers: int | None = None, address: str | None = None):
        self.template = template
        ray = _ray()
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=False)
        cpus = int(ray.available_resources().get("CPU", 1))
        self.num_workers = max(1, num_workers or cpus)
        remote = ray.remote(num_cpus=1)(_Worker)
        shared = [ray.put(v) for v in (template, clients)]  # a lazy population travels as its recipe
        self.workers = [remote.remote(*shared, vectorize, 1) for _ in range(self.num_workers)]
        self.ray = ray

    def train(self, params: dict[str, Tensor], client_ids: Sequence[int], rnd: int, local: LocalTraining
              ) -> RoundResult:
        ids = [int(c) for c in client_ids]
        shares = [s.tolist() for s in np.array_split(np.array(ids), self.num_workers) if len(s)]
        ref = self.ray.put({n: p.detach() for n, p in params.items()})
        results = self.ray.get([w.train.remote(ref, share, rnd, local)
                                for w, share in zip(self.workers, shares, strict=False)])
        return _concat(results)

    def shutdown(self) -> None:
        for w in self.workers:
            self.ray.kill(w)


def _concat(results: list[RoundResult]) -> RoundResult:
    """The workers' results as one, in the order the clients were given: what the in-process engine returns."""
    if len(results) == 1:
        return results[0]
    parts = [r.updates for r in results]
    names = list(dict.fromkeys(n for p in parts for n in p.deltas))  # a worker may hold no client of a parameter
    deltas, trained = {}, {}
    for n in names:
        like = next(p.deltas[n] for p in parts if n in p.deltas)
        deltas[n] = torch.cat([p.deltas[n] if n in p.deltas else like.new_zeros((len(p), *like.shape[1:]))
                               for p in parts])
        masks = [_mask(p, n) for p in parts]
        if not all(bool(m.all()) for m in masks):
            trained[n] = torch.cat(masks)
    updates = RoundUpdates([c for p in parts for c in p.client_ids], torch.cat([p.num_samples for p in parts]),
                           deltas, trained)
    return RoundResult(updates, torch.cat([r.train_loss for r in results]), _joined([r.wire for r in results]))


def _mask(u: RoundUpdates, name: str) -> Tensor:
    """Which of ``u``'s clients trained ``name``."""
    if name not in u.deltas:
        return torch.zeros(len(u), dtype=torch.bool)
    return u.trained.get(name, torch.ones(len(u), dtype=torch.bool))


def _joined(wires: list[Wire]) -> Wire:
    """The workers' wire forms joined in worker order (every worker of a round trains the same method)."""
    kinds = {type(w) for w in wires}
    if len(kinds) > 1:
        raise TrainingError("the Ray engine's workers disagree on what their clients send "
                            f"({sorted(k.__name__ for k in kinds)}); every worker of a round trains one method: "
                            "report this as a bug")
    if isinstance(wires[0], SeedPairs):
        return SeedPairs([h for w in wires if isinstance(w, SeedPairs) for h in w.histories])
    if isinstance(wires[0], Payloads):
        return Payloads([n for w in wires if isinstance(w, Payloads) for n in w.sizes])
    return InTheClear()
