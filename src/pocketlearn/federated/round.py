"""What the server hands an engine for one round, and the interface every engine implements.

An engine only moves data: it gets a :class:`RoundPlan` (who trains, how, what travels down and up, the
round's privacy and secure-aggregation settings) and returns a :class:`RoundResult`. It never reads the
server, so the in-process, Ray and Flower engines take the same plan and a test can build one by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeAlias

import torch
from torch import Tensor

from pocketlearn.federated.updates import RoundUpdates

if TYPE_CHECKING:  # (simulate.py builds its engine on SimulatedEngine: these are for annotations only)
    from pocketlearn.federated.mixed import Expansion
    from pocketlearn.federated.privacy.distributed import DistributedDP
    from pocketlearn.federated.privacy.report import LocalNoise
    from pocketlearn.federated.simulate import LocalTraining

SeedHistory: TypeAlias = list[tuple[int, float]]  # a MeZO client's (seed, projected gradient) pairs, in step order


@dataclass(frozen=True)
class InTheClear:
    """Simulated clients hand over their updates as trained; the server encodes them as their devices would."""


@dataclass(frozen=True)
class SeedPairs:
    """Each client's (seed, g) pairs, which travel instead of its update (seed exchange; a mixed run's ZO)."""

    histories: list[SeedHistory]


@dataclass(frozen=True)
class Payloads:
    """The updates crossed a real network and arrive decoded: each client's payload size in bytes.

    Under secure aggregation the updates are zero rows that only say who finished.
    """

    sizes: list[int]


Wire: TypeAlias = InTheClear | SeedPairs | Payloads  # what left each client besides its (decoded) update


@dataclass
class RoundResult:
    """A method group's round as an engine hands it back: each client's update, in the order asked for."""

    updates: RoundUpdates
    train_loss: Tensor  # (K,) each client's mean training loss
    wire: Wire = InTheClear()


@dataclass(frozen=True)
class SecurePlan:
    """A round aggregated by secure aggregation: the protocol's settings (``secagg`` section) and its DP.

    ``dp``: distributed DP (each device clips and adds a noise share before masking); None without DP.
    """

    threshold: float
    clip: float
    neighbours: int | None = None
    dp: DistributedDP | None = None


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """One method group of one round, as an engine needs it and nothing more.

    ``weights`` is the global model as it crosses the downlink (``downlink`` codec); ``wire_shapes`` is what
    one client's uplink payload decodes to (the global tensors, or a method's wire form in a mixed run).
    ``seeds``: MeZO's (seed, g) pairs travel instead of an update (seed exchange). ``local_noise``: local DP
    done on the device (None: no local DP, or the server simulates it).
    """

    rnd: int
    client_ids: list[int]
    local: LocalTraining
    wire_shapes: Mapping[str, torch.Size] = field(default_factory=dict)
    weights: bytes = b""
    downlink: str = "float32"
    uplink: str = "float32"
    seeds: bool = False
    codec_seed: int = 4
    error_feedback: bool = False
    run_id: str = ""
    local_noise: LocalNoise | None = None
    secure: SecurePlan | None = None


@dataclass
class SecureOutcome:
    """A securely aggregated round: the one row the server may see, and the protocol's bytes.

    ``row`` is None when the protocol could not complete (the round then applies no update, and ``failure``
    says why); ``finished`` counts the clients whose updates are in it.
    """

    row: RoundUpdates | None
    sent: int
    received: int
    finished: int
    failure: str | None = None


class Engine(Protocol):
    """Trains a round's clients wherever they are; the server's only way to reach them."""

    on_devices: ClassVar[bool]  # clients are real devices: they encode, noise and mask their own updates

    def run(self, params: dict[str, Tensor], plan: RoundPlan) -> RoundResult:
        """Train ``plan.client_ids`` from ``params``; their updates as the server reads them."""
        ...

    def secure_mean(self, finished: RoundUpdates, secure: SecurePlan, rnd: int) -> SecureOutcome:
        """Secure aggregation of the clients in ``finished`` (their sample-weighted mean, or under DP the noisy sum)."""
        ...

    def secure_combine(self, groups: list[tuple[str, RoundUpdates]], expansion: Expansion, secure: SecurePlan,
                       rnd: int) -> SecureOutcome:
        """A mixed round's secure aggregation: one protocol per method's wire updates, then the mixed rule."""
        ...


class SimulatedEngine:
    """The clients are simulated here: secure aggregation runs the real protocol on their updates in this process.

    Subclasses implement ``train(params, client_ids, rnd, local)``.
    """

    on_devices: ClassVar[bool] = False

    def train(self, params: dict[str, Tensor], client_ids: Sequence[int], rnd: int, local: LocalTraining
              ) -> RoundResult:
        raise NotImplementedError

    def run(self, params: dict[str, Tensor], plan: RoundPlan) -> RoundResult:
        """Simulated clients send their updates in the clear; the server replays what devices would encode."""
        return self.train(params, plan.client_ids, plan.rnd, plan.local)

    def secure_mean(self, finished: RoundUpdates, secure: SecurePlan, rnd: int) -> SecureOutcome:
        if secure.dp is not None:  # distributed DP: the unmasked noisy sum of clipped updates, unweighted
            from pocketlearn.federated.secagg.run import Ledger

            ledger = Ledger.empty(len(finished))
            sums = secure.dp.secure_sum(finished, threshold=secure.threshold, neighbours=secure.neighbours,
                                        seed=rnd, ledger=ledger)
            row = RoundUpdates([-1], finished.num_samples.sum().view(1), {n: t.unsqueeze(0) for n, t in sums.items()})
            return SecureOutcome(row, int(ledger.sent.sum()), int(ledger.received.sum()), len(finished))
        from pocketlearn.federated.secagg import secure_mean

        mean, ledger = secure_mean(finished, threshold=secure.threshold, clip=secure.clip,
                                   neighbours=secure.neighbours, seed=rnd)
        return SecureOutcome(mean, int(ledger.sent.sum()), int(ledger.received.sum()), len(finished))

    def secure_combine(self, groups: list[tuple[str, RoundUpdates]], expansion: Expansion, secure: SecurePlan,
                       rnd: int) -> SecureOutcome:
        from pocketlearn.federated.mixed import secure_combine

        row, sent, received = secure_combine(groups, expansion, threshold=secure.threshold, clip=secure.clip,
                                             neighbours=secure.neighbours, seed=rnd)
        return SecureOutcome(row, sent, received, sum(len(u) for _, u in groups))
