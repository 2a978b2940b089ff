"""One object that privatises a round: clip → (local noise) → sum → (central noise) → fixed-denominator mean.

Dividing the noisy sum by the *expected* number of clients rather than the number that reported keeps the
denominator public (the count of reports is itself private data) and the estimator unbiased under sampling
(McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, the fixed-denominator
estimator). Each client counts once (uniform weights): sample-count weights would raise the sensitivity.

Where the noise comes from: central noise (and the adaptive clip's count noise) from one generator seeded from
the OS's CSPRNG when the mechanism is made; its state lives in :meth:`state_dict` (the server checkpoint) and
nowhere else, so a resume is bit-exact and nobody without the checkpoint can regenerate the noise. Local
noise is each device's own: the simulation draws it from a fresh CSPRNG generator per client and round that
nothing keeps (a resumed run draws new noise for the rounds still to come). ``dp.reproducible_noise`` derives
both from (seed, round[, client]) instead: repeatable, and not private.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError
from pocketlearn.federated.privacy.accountant import (
    PrivacyAccountant,
    central_round_event,
    local_report_event,
)
from pocketlearn.federated.privacy.clipping import AdaptiveClip, FixedClip
from pocketlearn.federated.privacy.config import DPConfig
from pocketlearn.federated.privacy.noise import (
    add_central_noise_,
    add_local_noise_,
    derived_generator,
    secure_generator,
)
from pocketlearn.federated.privacy.report import LocalNoise
from pocketlearn.federated.updates import RoundUpdates


class PrivacyMechanism:
    """DP for a federated run: ``expected_clients`` drawn per round, without replacement, of ``num_clients``.

    ``num_clients`` is the population the sampler can actually draw from (clients whose device can train); the
    accountant charges a fixed-size sample of min(expected_clients, num_clients) of it per round.

    ``privatize(updates, rnd)`` returns the private mean delta per parameter and charges the accountant;
    ``check_run(rounds)`` refuses a run that would exceed ``target_epsilon`` before it starts. In central mode
    with adaptive clipping, part of the privacy goes to the noisy count: the update noise multiplier is
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that the pair is exactly as private as one Gaussian of multiplier z
    (Andrew et al., NeurIPS 2021, Section 3.1); the accountant is charged for z.
    """

    def __init__(self, config: DPConfig, *, expected_clients: int, num_clients: int):
        if expected_clients < 1 or num_clients < 1:
            raise ConfigError(f"expected_clients and num_clients should be >= 1, got {expected_clients} and "
                              f"{num_clients}")
        self.config, self.expected_clients, self.num_clients = config, expected_clients, num_clients
        self.sample_size = min(expected_clients, num_clients)
        self.clipper = self._clipper()
        self.update_noise_multiplier = self._update_noise_multiplier()
        event = (central_round_event(config.noise_multiplier, num_clients, self.sample_size)
                 if config.mode == "central" else local_report_event(config.noise_multiplier))
        self.accountant = PrivacyAccountant(event, config.accountant, config.delta, config.target_epsilon)
        self.rounds = 0
        self.reports: dict[int, int] = {}  # local mode: client id -> rounds it reported in
        self.noised_by_devices = False  # local mode on real devices: reports arrive clipped and noised
        # central noise; secret: only state_dict (the server checkpoint) holds its state
        self._generator = secure_generator() if config.mode == "central" and not config.reproducible_noise \
            else None

    @property
    def noise_source(self) -> str:
        """Where the noise comes from, in words (the run's summary, metrics and report show it)."""
        return self.config.noise_source

    def _central_generator(self, rnd: int) -> torch.Generator:
        if self._generator is None:  # reproducible_noise (or local mode, where only the clip may use it)
            return derived_generator(self.config.seed, rnd)
        return self._generator

    def _device_generators(self, rnd: int) -> Callable[[int], torch.Generator]:
        """Local mode: each simulated device's own randomness for round ``rnd``, kept by nobody."""
        if self.config.reproducible_noise:
            return lambda client: derived_generator(self.config.seed, rnd, client)
        return lambda client: secure_generator()

    def _clipper(self) -> FixedClip:
        c = self.config
        if not c.adaptive:
            return FixedClip(c.clip)
        stddev = c.clipped_count_stddev
        if stddev is None:
            stddev = 0.05 * self.expected_clients if c.noise_multiplier > 0 else 0.0
        return AdaptiveClip(c.clip, target_quantile=c.target_quantile, lr=c.clip_lr, count_stddev=stddev)

    def _update_noise_multiplier(self) -> float:
        z = self.config.noise_multiplier
        if not isinstance(self.clipper, AdaptiveClip) or z == 0:
            return z
        sigma_b = self.clipper.count_stddev
        if z >= 2 * sigma_b:
            raise ConfigError(f"adaptive clipping spends part of the noise on the clipped count: noise_multiplier "
                              f"{z} must be below 2 x clipped_count_stddev = {2 * sigma_b:g}; raise "
                              "clipped_count_stddev (e.g. to 0.05-0.1 x clients per round) or lower noise_multiplier")
        return float((z**-2 - (2 * sigma_b) ** -2) ** -0.5)

    # --- budget ----------------------------------------------------------------------------------------------
    def check_run(self, rounds: int) -> None:
        """Raise PrivacyBudgetError if ``rounds`` rounds (worst case: every one for a local client) exceed ε."""
        self.accountant.check(rounds, what=f"a run of {rounds} rounds")

    def epsilon_so_far(self) -> float:
        """ε spent so far at the configured delta (local mode: by the client that reported most often)."""
        return self.accountant.epsilon()

    # --- one round -------------------------------------------------------------------------------------------
    def privatize(self, updates: RoundUpdates, rnd: int, always: Mapping[str, torch.Size] | None = None
                  ) -> dict[str, Tensor]:
        """The private mean delta (*shape) of each parameter some client trained; clips ``updates`` in place.

        ``always``: tensors released (noised) every round even when no client of the round trained them, so
        that which ones appear says nothing about who took part (mixed-method runs).
        Raises PrivacyBudgetError, before anything is released, if this round would exceed target_epsilon.
        """
        local = self.config.mode == "local"
        after = max(self.reports.get(c, 0) for c in updates.client_ids) + 1 if local else self.accountant.count + 1
        self.accountant.check(after, what=f"round {rnd}")
        bound = self.clipper.bound
        std = self.update_noise_multiplier * bound
        generator = self._central_generator(rnd)
        if local and self.noised_by_devices:  # each device did both with local_noise(rnd): never again here
            norms = updates.client_norms()  # (K,) of the noisy reports; a fixed bound does not learn from them
        else:
            norms = self.clipper.clip_(updates)  # (K,)
            if local:
                add_local_noise_(updates, std, self._device_generators(rnd))
        with torch.no_grad():
            sums = {name: d.sum(0) for name, d in updates.deltas.items() if _trained(updates, name)}  # (*shape)
            for name, shape in (always or {}).items():
                sums.setdefault(name, torch.zeros(shape))
            if not local:
                add_central_noise_(sums, std, generator)
            means = {name: s.div_(self.expected_clients) for name, s in sums.items()}
        self.clipper.update(norms, expected_clients=self.expected_clients, generator=generator)
        self._charge(updates, after)
        return means

    def local_noise(self, rnd: int, unit: float = 1.0) -> LocalNoise:
        """What a device does to its own report of round ``rnd`` in local mode: the bound and noise level only.

        The device draws the noise from its own secure randomness; nothing here lets the server redraw it.
        """
        if self.config.mode != "local":
            raise ConfigError(f"local_noise is local mode's device step; this mechanism's mode is "
                              f"{self.config.mode!r}")
        bound = self.clipper.bound
        return LocalNoise(bound, self.update_noise_multiplier * bound, rnd, unit)

    def _charge(self, updates: RoundUpdates, after: int) -> None:
        self.rounds += 1
        if self.config.mode == "local":
            for c in updates.client_ids:
                self.reports[c] = self.reports.get(c, 0) + 1
        self.accountant.count = after

    # --- resume ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"rounds": self.rounds, "clip": self.clipper.state_dict(), "accountant": self.accountant.state_dict(),
                 "reports": dict(self.reports)}
        if self._generator is not None:  # secret: this dict goes to the server checkpoint only
            state["noise_generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        self.clipper.load_state_dict(state["clip"])
        self.accountant.load_state_dict(state["accountant"])
        self.reports = {int(c): int(n) for c, n in state.get("reports", {}).items()}
        if self._generator is not None:
            if "noise_generator" not in state:
                raise ConfigError("this checkpoint has no DP noise generator state (written with seeded noise or "
                                  "by an older version); resuming would change the noise. Start the run over "
                                  "with --fresh, or set dp.reproducible_noise = true to continue it as a "
                                  "(not private) research run")
            self._generator.set_state(state["noise_generator"])


def _trained(updates: RoundUpdates, name: str) -> bool:
    mask = updates.trained.get(name)
    return mask is None or bool(mask.any())
