"""A round's steps, chosen once when the server is built: which ones a run has follows from its config.

Device side (the simulator replays on the server what a device does before its update leaves it): train →
attack (studies) → wire form (codec, MeZO's seeds, a mixed run's ZO coefficients: one
:class:`~pocketlearn.federated.uplink.Uplink` per method) → clip / noise → mask.
Server side: unmask → decode / expand → aggregate (strategy) → central noise and accountant → apply.
Secure aggregation and DP wrap the strategy as :class:`Aggregation` steps, as Flower's DP strategy wrappers
do; the round loop calls one of each kind and has no feature flags.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError
from pocketlearn.federated.round import Engine, SecurePlan
from pocketlearn.federated.simulate import LocalTraining
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.updates import RoundUpdates

if TYPE_CHECKING:
    from pocketlearn.federated.config import SecAggSection
    from pocketlearn.federated.mixed import Expansion, MixedMethods
    from pocketlearn.federated.privacy.mechanism import PrivacyMechanism


# --- who trains how: one method for every client, or a mixed run's methods ----------------------------------------
class Methods(Protocol):
    """How each method group of a round trains and what its payloads decode to."""

    def local(self, method: str, rnd: int) -> LocalTraining: ...

    def wire_shapes(self, params: dict[str, Tensor], expansion: Expansion | None, method: str
                    ) -> dict[str, torch.Size]: ...

    def expansion(self, params: dict[str, Tensor], rnd: int) -> Expansion | None: ...


@dataclass(frozen=True)
class OneMethod:
    """Every client trains with the run's method; updates are deltas of the global tensors."""

    base: LocalTraining

    def local(self, method: str, rnd: int) -> LocalTraining:
        return replace(self.base, method=method)

    def wire_shapes(self, params: dict[str, Tensor], expansion: Expansion | None, method: str
                    ) -> dict[str, torch.Size]:
        return {n: p.shape for n, p in params.items()}

    def expansion(self, params: dict[str, Tensor], rnd: int) -> Expansion | None:
        return None


@dataclass(frozen=True)
class MixedRound:
    """Devices train with different methods; each method's wire updates expand to global deltas (mixed rule)."""

    base: LocalTraining
    mixed: MixedMethods

    def local(self, method: str, rnd: int) -> LocalTraining:
        options = self.mixed.round_options(rnd)[method]
        return replace(self.base, method=method, options=tuple(sorted(options.items())))

    def wire_shapes(self, params: dict[str, Tensor], expansion: Expansion | None, method: str
                    ) -> dict[str, torch.Size]:
        assert expansion is not None, "a mixed round has its expansion"
        return dict(expansion.wire[method])

    def expansion(self, params: dict[str, Tensor], rnd: int) -> Expansion | None:
        return self.mixed.expansion(params, rnd)


# --- server side: from the updates that arrived to new global weights --------------------------------------------
@dataclass
class Arrived:
    """The updates of the clients that made the deadline, decoded and expanded to global-parameter deltas.

    ``wire``: in a mixed run, each method's wire updates of those clients (what secure or private aggregation
    sums before expanding); ``expansion``: that run's linear maps of the round.
    """

    rnd: int
    updates: RoundUpdates
    wire: list[tuple[str, RoundUpdates]]
    expansion: Expansion | None = None


@dataclass(frozen=True)
class Applied:
    """What aggregating a round did: clients whose updates are in it, and the protocol's bytes if one ran.

    ``sent``: bytes the clients sent, replacing their payloads' (secure aggregation); None: the payloads'.
    ``failure``: why nothing was applied, when the protocol could not complete.
    """

    finished: int
    sent: int | None = None
    received: int = 0
    failure: str | None = None


class Aggregation(Protocol):
    """The server side of a round after decoding: unmask, aggregate, noise, apply to ``params`` in place."""

    def apply(self, params: dict[str, Tensor], arrived: Arrived) -> Applied: ...


@dataclass
class Plain:
    """The strategy sees every update (a private strategy clips and noises them itself: central or local DP)."""

    strategy: Strategy

    def apply(self, params: dict[str, Tensor], arrived: Arrived) -> Applied:
        self.strategy.apply(params, arrived.updates)
        return Applied(len(arrived.updates))


@dataclass
class SecureAggregation:
    """Wraps the strategy: it sees only the clients' mean, as one row, from secure aggregation by the engine."""

    strategy: Strategy
    engine: Engine
    secure: SecurePlan

    def apply(self, params: dict[str, Tensor], arrived: Arrived) -> Applied:
        out = self.engine.secure_mean(arrived.updates, self.secure, arrived.rnd)
        if out.row is not None:
            self.strategy.apply(params, out.row)
        return Applied(out.finished, out.sent, out.received, out.failure)


@dataclass
class DistributedPrivacy:
    """Secure aggregation with DP: the clients noise their clipped updates; the server releases the noisy sum."""

    strategy: Strategy
    engine: Engine
    secure: SecurePlan

    def apply(self, params: dict[str, Tensor], arrived: Arrived) -> Applied:
        assert self.secure.dp is not None, "distributed privacy is chosen for a secure round with DP only"
        out = self.engine.secure_mean(arrived.updates, self.secure, arrived.rnd)
        if out.row is not None:
            self.strategy.apply_means(params, self.secure.dp.release({n: d[0] for n, d in out.row.deltas.items()}))
        return Applied(out.finished, out.sent, out.received, out.failure)


@dataclass
class MixedSecureAggregation:
    """A mixed round's secure aggregation: one protocol per method over wire updates, then the mixed rule."""

    strategy: Strategy
    engine: Engine
    secure: SecurePlan

    def apply(self, params: dict[str, Tensor], arrived: Arrived) -> Applied:
        assert arrived.expansion is not None, "a mixed round carries its expansion"
        out = self.engine.secure_combine(arrived.wire, arrived.expansion, self.secure, arrived.rnd)
        if out.row is not None:
            self.strategy.apply(params, out.row)
        return Applied(out.finished, out.sent, out.received, out.failure)


@dataclass
class MixedPrivacy:
    """A mixed round under central DP: clip, sum and noise in the wire space, then expand (``mixed`` docs)."""

    strategy: Strategy
    mixed: MixedMethods
    mechanism: PrivacyMechanism

    def apply(self, params: dict[str, Tensor], arrived: Arrived) -> Applied:
        from pocketlearn.federated.mixed import private_combine

        assert arrived.expansion is not None, "a mixed round carries its expansion"
        self.strategy.apply_means(params, private_combine(arrived.wire, arrived.expansion, self.mixed,
                                                          self.mechanism))
        return Applied(len(arrived.updates))


def secure_plan(secagg: SecAggSection | None, mechanism: PrivacyMechanism | None) -> SecurePlan | None:
    """The round's secure-aggregation settings from a ``secagg`` section (None: no secure aggregation)."""
    if secagg is None:
        return None
    dp = None
    if mechanism is not None:  # distributed DP: the clients share the strategy's noise
        from pocketlearn.federated.privacy.distributed import DistributedDP

        dp = DistributedDP(mechanism)
    return SecurePlan(secagg.threshold, secagg.clip, secagg.neighbours, dp)


def aggregation(strategy: Strategy, engine: Engine, secure: SecurePlan | None, mixed: MixedMethods | None
                ) -> Aggregation:
    """The run's server-side steps around its strategy, chosen from its config once."""
    mechanism = strategy.mechanism
    if secure is not None and mixed is not None:
        if secure.dp is not None:
            raise ConfigError("dp-fedavg with secagg in a mixed-method run: distributed DP is implemented for "
                              "single-method runs; pin one client.method, or turn secagg off (central DP)")
        return MixedSecureAggregation(strategy, engine, secure)
    if secure is not None:
        return DistributedPrivacy(strategy, engine, secure) if secure.dp is not None \
            else SecureAggregation(strategy, engine, secure)
    if mixed is not None and mechanism is not None:
        return MixedPrivacy(strategy, mixed, mechanism)
    return Plain(strategy)
