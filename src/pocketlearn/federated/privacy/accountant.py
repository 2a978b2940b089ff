"""Privacy accounting with dp-accounting: a round is a DpEvent, and the accountant composes them.

No privacy formula of ours: ε comes from dp-accounting's RDP accountant (Mironov, "Rényi Differential
Privacy", 2017) or its PLD accountant (privacy loss distributions; tighter, slower), and noise calibration from
``dp_accounting.calibrate_dp_mechanism``. A central round of DP-FedAvg is accounted as the sampler runs it
(:class:`pocketlearn.federated.sampling.ClientSampler`): a fixed-size set of k clients drawn without replacement
from the n that can be sampled, ``SampledWithoutReplacementDpEvent(n, k, GaussianDpEvent(z / 2))`` under
replace-one neighbouring (Wang, Balle, Kasiviswanathan, "Subsampled Rényi Differential Privacy", AISTATS 2019,
Theorem 27). Replacing one client moves the clipped sum by up to 2·clip, hence z / 2. dp-accounting's PLD
accountant has no fixed-size sampling, so central rounds are accounted with RDP only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dp_accounting as dpa

from pocketlearn.errors import ConfigError

# RDP orders whose series do not converge are skipped by dp-accounting with an absl warning per order; the
# skip is correct (epsilon is the minimum over the others) and the warnings would drown a run's progress bar.
logging.getLogger("absl").setLevel(logging.ERROR)

PLD_DISCRETIZATION = 1e-3  # ε to ~1e-3 (pessimistic), 5-10x faster than dp-accounting's default 1e-4
MAX_ROUNDS = 10**7  # rounds_within's search limit


class PrivacyBudgetError(ConfigError):
    """A run, or its next round, would spend more than the target ε."""


def make_accountant(kind: str) -> dpa.PrivacyAccountant:
    """A fresh ``"rdp"`` (replace-one neighbouring clients) or ``"pld"`` accountant."""
    if kind == "rdp":
        return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    if kind == "pld":
        return dpa.pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    raise ConfigError(f"accountant should be 'rdp' or 'pld', got {kind!r}")


def central_round_event(noise_multiplier: float, population: int, sample_size: int) -> dpa.DpEvent:
    """One DP-FedAvg round: noise z·clip on the sum of ``sample_size`` clients drawn without replacement.

    ``population``: the clients that can be sampled (those whose device can train). When the sample is the
    whole population there is no amplification: a plain Gaussian of sensitivity 2·clip.
    """
    _check_sampling(population, sample_size)
    gaussian = dpa.GaussianDpEvent(noise_multiplier / 2)
    k = min(sample_size, population)
    if k == population or noise_multiplier == 0:  # everyone, or no noise (ε is infinite either way)
        return gaussian
    return dpa.SampledWithoutReplacementDpEvent(population, k, gaussian)


def local_report_event(noise_multiplier: float) -> dpa.DpEvent:
    """One client's locally noised report: replacing its update moves it by up to 2·clip, so z/2 per clip.

    The server sees who reported, so there is no amplification by sampling.
    """
    return dpa.GaussianDpEvent(noise_multiplier / 2)


def epsilon_of(event: dpa.DpEvent, count: int, delta: float, kind: str = "rdp") -> float:
    """ε at ``delta`` after ``count`` compositions of ``event``."""
    check_supported(event, kind)
    if count <= 0:
        return 0.0
    return float(make_accountant(kind).compose(dpa.SelfComposedDpEvent(event, count)).get_epsilon(delta))


def check_supported(event: dpa.DpEvent, kind: str) -> None:
    """ConfigError when accountant ``kind`` cannot account ``event`` (PLD and fixed-size sampling)."""
    if not make_accountant(kind).supports(event):
        raise ConfigError(f"the {kind} accountant of dp-accounting cannot account {event}; clients are sampled "
                          "as a fixed-size set without replacement, which only the rdp accountant supports: use "
                          "accountant = 'rdp'")


def epsilon(noise_multiplier: float, population: int, sample_size: int, rounds: int, delta: float,
            kind: str = "rdp") -> float:
    """ε at ``delta`` of ``rounds`` central DP-FedAvg rounds of ``sample_size`` clients out of ``population``."""
    return epsilon_of(central_round_event(noise_multiplier, population, sample_size), rounds, delta, kind)


def rounds_within(event: dpa.DpEvent, target_epsilon: float, delta: float, kind: str = "rdp") -> int:
    """The most compositions of ``event`` whose ε stays within ``target_epsilon`` (0 if not even one)."""
    if epsilon_of(event, 1, delta, kind) > target_epsilon:
        return 0
    if epsilon_of(event, MAX_ROUNDS, delta, kind) <= target_epsilon:
        return MAX_ROUNDS
    return int(dpa.calibrate_dp_mechanism(lambda: make_accountant(kind), lambda n: dpa.SelfComposedDpEvent(event, n),
                                          target_epsilon, delta, dpa.ExplicitBracketInterval(1, MAX_ROUNDS),
                                          discrete=True))


def calibrate_noise(target_epsilon: float, delta: float, population: int, sample_size: int, rounds: int,
                    kind: str = "rdp", *, tol: float = 1e-3) -> float:
    """The smallest noise multiplier (within ``tol``) for which ``rounds`` rounds spend at most ``target_epsilon``.

    Only RDP accounts fixed-size sampling (:func:`check_supported` says so for ``kind = "pld"``).
    """
    check_supported(central_round_event(1.0, population, sample_size), kind)
    if rounds < 1 or target_epsilon <= 0:
        raise ConfigError(f"calibrate_noise needs rounds >= 1 and target_epsilon > 0, got {rounds} and "
                          f"{target_epsilon}")

    def events(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(central_round_event(z, population, sample_size), rounds)

    return _calibrate(events, target_epsilon, delta, kind, dpa.LowerEndpointAndGuess(1e-3, 1.0), tol)


def _calibrate(events: Callable[[float], dpa.DpEvent], target_epsilon: float, delta: float, kind: str,
               bracket: dpa.LowerEndpointAndGuess, tol: float) -> float:
    return float(dpa.calibrate_dp_mechanism(lambda: make_accountant(kind), events, target_epsilon, delta, bracket,
                                            tol=tol))


def _check_sampling(population: int, sample_size: int) -> None:
    if population < 1 or sample_size < 1:
        raise ConfigError(f"sampling needs at least one client that can train and one per round, got "
                          f"population {population} and sample size {sample_size}")


class PrivacyAccountant:
    """Counts the rounds (or, in local mode, one client's reports) of one repeated DpEvent and reports ε.

    The ledger is just the count, so ``state_dict`` is one integer and ε after resume is exactly the same.
    """

    def __init__(self, event: dpa.DpEvent, kind: str = "rdp", delta: float = 1e-5,
                 target_epsilon: float | None = None):
        check_supported(event, kind)  # a bad kind, or one that cannot account the event, fails here
        self.event, self.kind, self.delta, self.target_epsilon = event, kind, delta, target_epsilon
        self.count = 0
        self._cache: dict[int, float] = {}

    def epsilon(self, count: int | None = None) -> float:
        """ε at ``delta`` after ``count`` compositions (default: those so far)."""
        count = self.count if count is None else count
        if count not in self._cache:
            self._cache = {count: epsilon_of(self.event, count, self.delta, self.kind)}  # keep one value
        return self._cache[count]

    def rounds_within(self, target_epsilon: float | None = None) -> int:
        """How many compositions in all fit in ``target_epsilon`` (default: the configured target)."""
        target = self.target_epsilon if target_epsilon is None else target_epsilon
        if target is None:
            return MAX_ROUNDS
        return rounds_within(self.event, target, self.delta, self.kind)

    def check(self, count: int, what: str = "the next round") -> None:
        """Raise PrivacyBudgetError if ``count`` compositions would exceed the target ε."""
        if self.target_epsilon is None or self.epsilon(count) <= self.target_epsilon:
            return
        fit = self.rounds_within()
        raise PrivacyBudgetError(
            f"{what} would bring ε to {self.epsilon(count):.3g} (delta {self.delta:g}, {self.kind}, {count} "
            f"rounds), above target_epsilon {self.target_epsilon:g}; at most {fit} rounds fit. Stop here, or "
            "start a run with a larger noise_multiplier (see `pocketlearn privacy --target-epsilon`)")

    def step(self, count: int = 1) -> None:
        self.count += count

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
