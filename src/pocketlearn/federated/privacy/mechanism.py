"""One object that privatises a round: clip → (local noise) → sum → (central noise) → fixed-denominator mean.

Dividing the noisy sum by the *expected* number of clients rather than the number that reported keeps the
denominator public (the count of reports is itself private data) and the estimator unbiased under sampling
(McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018, the fixed-denominator
estimator). Each client counts once (uniform weights): sample-count weights would raise the sensitivity.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from pocketlearn.federated.privacy.noise import add_central_noise_, add_local_noise_, derived_generator
from pocketlearn.federated.privacy.report import LocalNoise
from pocketlearn.federated.updates import RoundUpdates


class PrivacyMechanism:
    """DP for a federated run of ``num_clients`` clients, ``expected_clients`` sampled per round.

    ``privatize(updates, rnd)`` returns the private mean delta per parameter and charges the accountant;
    ``check_run(rounds)`` refuses a run that would exceed ``target_epsilon`` before it starts. In central mode
    with adaptive clipping, part of the privacy goes to the noisy count: the update noise multiplier is
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that the pair is exactly as private as one Gaussian of multiplier z
    (Andrew et al., NeurIPS 2021, Section 3.1); the accountant is charged for z.
    """

    def __init__(self, config: DPConfig, *, expected_clients: int, num_clients: int):
        if not 1 <= expected_clients <= num_clients:
            raise ConfigError(f"expected_clients should be in [1, num_clients = {num_clients}], got "
                              f"{expected_clients}")
        self.config, self.expected_clients, self.num_clients = config, expected_clients, num_clients
        self.sample_rate = expected_clients / num_clients
        self.clipper = self._clipper()
        self.update_noise_multiplier = self._update_noise_multiplier()
        event = (central_round_event(config.noise_multiplier, self.sample_rate) if config.mode == "central"
                 else local_report_event(config.noise_multiplier))
        self.accountant = PrivacyAccountant(event, config.accountant, config.delta, config.target_epsilon)
        self.rounds = 0
        self.reports: dict[int, int] = {}  # local mode: client id -> rounds it reported in
        self.noised_by_devices = False  # local mode on real devices: reports arrive clipped and noised

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
        generator = derived_generator(self.config.seed, rnd)
        if local and self.noised_by_devices:  # each device did both with local_noise(rnd): never again here
            norms = updates.client_norms()  # (K,) of the noisy reports; a fixed bound does not learn from them
        else:
            norms = self.clipper.clip_(updates)  # (K,)
            if local:
                add_local_noise_(updates, std, seed=self.config.seed, rnd=rnd)
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
        """What a device does to its own report of round ``rnd`` in local mode (the server's noise, drawn there)."""
        if self.config.mode != "local":
            raise ConfigError(f"local_noise is local mode's device step; this mechanism's mode is "
                              f"{self.config.mode!r}")
        bound = self.clipper.bound
        return LocalNoise(bound, self.update_noise_multiplier * bound, self.config.seed, rnd, unit)

    def _charge(self, updates: RoundUpdates, after: int) -> None:
        self.rounds += 1
        if self.config.mode == "local":
            for c in updates.client_ids:
                self.reports[c] = self.reports.get(c, 0) + 1
        self.accountant.count = after

    # --- resume ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "clip": self.clipper.state_dict(), "accountant": self.accountant.state_dict(),
                "reports": dict(self.reports)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        self.clipper.load_state_dict(state["clip"])
        self.accountant.load_state_dict(state["accountant"])
        self.reports = {int(c): int(n) for c, n in state.get("reports", {}).items()}


def _trained(updates: RoundUpdates, name: str) -> bool:
    mask = updates.trained.get(name)
    return mask is None or bool(mask.any())
