"""Distributed DP with secure aggregation: each client adds its share of the noise before it masks its update.

Scheme: the distributed discrete Gaussian of Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021, with dropout-aware scaling. Per round:

1. each client clips its whole update to L2 norm C (uniform weights: DP-FedAvg's fixed-denominator estimator;
   sample weights would raise the sensitivity) and rounds it to the ring, x ↦ rint(x·s) (s: ring units per
   float unit of the round's :class:`~pocketlearn.federated.secagg.FieldSpec`);
2. it adds integer noise of variance σ²/t, drawn from its own secure randomness (the OS CSPRNG), where
   σ = z·Δ, Δ = C·s + √d/2 is the L2 sensitivity in ring units (deterministic rounding moves a d-vector by at most
   √d/2), z the configured noise multiplier and t the fewest survivors the protocol unmasks with (its threshold);
3. it masks and sends; the server unmasks the sum of the m ≥ t survivors, which carries noise of variance
   m·σ²/t ≥ σ², divides by the expected number of clients and steps.

The accountant is charged for noise multiplier z — the same event as central DP-FedAvg — because the noise that
survives the worst dropout the protocol allows (m = t) is exactly σ = z·Δ. With no dropout the sum carries
σ·√(n/t): more noise than central DP, the price of not trusting the server with it.

Approximations, stated: the paper's shares are discrete Gaussians; ours are rounded float64 Gaussians, drawn at
σ/√t ≥ :data:`MIN_SHARE_STD` ring units (refused below), where the two and the sum of m of them are far closer
than the accountant's resolution: the paper bounds the gap between a sum of m discrete Gaussian shares and one
discrete Gaussian by τ = 10·Σ_{k<m} exp(−2π²σ_s²·k/(k+1)), σ_s the share std, below 1e-400 at σ_s ≥ 10.
The ring holds C + :data:`TAIL_STDS` share stds per coordinate, so a share wraps with probability < 2e-23
per coordinate; a device whose value would not fit refuses to send rather than clip. Floating-point side
channels of Gaussian sampling (Mironov, CCS 2012) are not addressed.

Threat model: an honest-but-curious server that follows the protocol (it could otherwise tell clients a
smaller noise or a lower threshold), and clients that do not collude with it. The accounted ε assumes no client
colludes either: c colluding clients (every client sees the released model) can subtract their own shares,
leaving noise of variance (m − c)·σ²/t, below the accounted σ² when m − c < t (with c = t − 1: when fewer than
2t − 1 clients survive). Nothing a client draws is derived from a seed, the config or a message,
unless the research option ``dp.reproducible_noise`` is on (then not private; `fed serve` refuses it). So a
resumed run is not bit-exact with an uninterrupted one (the shares of the rounds after the resume are new), except
under ``reproducible_noise``, where client c's share of round r comes from (dp.seed, r, c). The ``secagg.clip``
range is not used under DP: the ring's range follows from dp.clip and the noise (:attr:`NoiseShare.field_range`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError, TrainingError, raise_problems
from pocketlearn.federated.privacy.config import DPConfig
from pocketlearn.federated.updates import RoundUpdates

TAIL_STDS = 10.0  # the ring's room beyond the clip, in share stds: P(|N(0,1)| > 10) < 1.6e-23
MIN_SHARE_STD = 10.0  # ring units; below this a rounded Gaussian is a poor stand-in for a discrete one
BITS = 32  # every |value| < 2^31 survives the float64 round trip into the protocol's own quantizer exactly


def config_problems(dp: DPConfig) -> list[str]:
    """Why ``dp`` cannot be distributed among secure-aggregation clients (empty: it can)."""
    out = []
    if dp.mode != "central":
        out.append("dp.mode = 'local' with secagg: with secure aggregation the clients already add the noise "
                   "(distributed DP, accounted as central DP-FedAvg); set dp.mode = 'central'")
    if dp.adaptive:
        out.append("dp.adaptive with secagg: the adaptive bound needs the count of unclipped clients, which would "
                   "need its own secure sum; set dp.adaptive = false and a fixed dp.clip")
    return out


@dataclass(frozen=True)
class NoiseShare:
    """One round's device step, public to every party: clip, round to the ring, add this client's noise share.

    ``num_clients`` (n) take part in the protocol; ``threshold`` (t) of them suffice to unmask; ``dim`` (d) is the
    length of the vector each sends. The field's range is derived so that value + noise never clips or wraps.
    """

    clip: float
    noise_multiplier: float
    num_clients: int
    threshold: int
    dim: int

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.num_clients:
            raise ConfigError(f"threshold should be in [1, num_clients = {self.num_clients}], got {self.threshold}")
        if self.clip <= 0 or self.noise_multiplier < 0 or self.dim < 1:
            raise ConfigError(f"NoiseShare needs clip > 0, noise_multiplier >= 0 and dim >= 1, got {self.clip}, "
                              f"{self.noise_multiplier} and {self.dim}")
        if self._growth >= 0.5:
            raise ConfigError(f"{self.num_clients} clients of {self.dim} values leave too few ring levels for "
                              f"noise multiplier {self.noise_multiplier}: rounding would dominate the noise; "
                              "sample fewer clients per round or train fewer parameters")
        if 0 < self.share_std < MIN_SHARE_STD:
            raise ConfigError(f"each client's noise share would be {self.share_std:.3g} ring units, below "
                              f"{MIN_SHARE_STD:g}, where rounded Gaussians stop standing in for discrete ones; "
                              "raise noise_multiplier or sample fewer clients per round")

    @property
    def levels(self) -> int:
        from pocketlearn.federated.secagg import FieldSpec

        return FieldSpec(1.0, self.num_clients, BITS).levels

    @property
    def _growth(self) -> float:
        """How much of the range the rounding term's noise takes (b in range = (C + a) / (1 − b))."""
        return TAIL_STDS * self.noise_multiplier * math.sqrt(self.dim) / (2 * self.levels * math.sqrt(self.threshold))

    @property
    def field_range(self) -> float:
        """Per-coordinate range of the ring, in float units: C plus TAIL_STDS share stds."""
        a = TAIL_STDS * self.noise_multiplier * self.clip / math.sqrt(self.threshold)
        return (self.clip + a) / (1 - self._growth)

    def field(self) -> Any:
        """The :class:`~pocketlearn.federated.secagg.FieldSpec` every party of the round uses."""
        from pocketlearn.federated.secagg import FieldSpec

        return FieldSpec(self.field_range, self.num_clients, BITS)

    @property
    def scale(self) -> float:
        """Ring units per float unit."""
        return self.levels / self.field_range

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the ring sum to one client: C·s + √d/2 (deterministic rounding)."""
        return self.clip * self.scale + math.sqrt(self.dim) / 2

    @property
    def share_std(self) -> float:
        """Std of one client's noise share, in ring units: z·Δ/√t."""
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.threshold)

    def sum_std(self, survivors: int) -> float:
        """Std per coordinate of the noise in the float sum of ``survivors`` clients: z·Δ·√(m/t) / s."""
        return self.share_std * math.sqrt(survivors) / self.scale

    def apply(self, vector: np.ndarray | Tensor, generator: torch.Generator) -> np.ndarray:
        """The float vector this client hands the protocol: clipped, rounded, plus its noise share.

        Its values are multiples of 1/s, so the protocol's quantizer recovers the integers exactly. Raises
        TrainingError (the client sits the round out) in the < 2e-23 tail where a value would not fit the ring.
        """
        x = vector.detach().cpu().double().numpy() if isinstance(vector, Tensor) else np.asarray(vector, np.float64)
        x = x.reshape(-1)
        if x.size != self.dim or not np.isfinite(x).all():
            raise TrainingError(f"a distributed-DP client got {x.size} values (finite: {bool(np.isfinite(x).all())}), "
                                f"the round expects {self.dim} finite values")
        norm = float(np.linalg.norm(x))
        if norm > self.clip:
            x = x * (self.clip / norm)
        q = np.rint(x * self.scale)
        if self.share_std > 0:
            q += np.rint(torch.randn(self.dim, generator=generator, dtype=torch.float64).numpy() * self.share_std)
        if np.abs(q).max(initial=0.0) > self.levels:
            raise TrainingError("a noise share fell outside the secure-aggregation ring (a < 2e-23 event per value); "
                                "this client sits the round out rather than clip its noise")
        return q / self.scale

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoiseShare:
        try:
            return cls(float(d["clip"]), float(d["noise_multiplier"]), int(d["num_clients"]), int(d["threshold"]),
                       int(d["dim"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"a distributed-DP round description is malformed ({err!r}); expected the fields "
                              "clip, noise_multiplier, num_clients, threshold, dim") from None


class DistributedDP:
    """The server's side: plans each round's shares, and releases the unmasked noisy sum through the accountant.

    Uses the strategy's :class:`~pocketlearn.federated.privacy.mechanism.PrivacyMechanism` for the clip bound,
    the noise multiplier, the expected number of clients and the accountant, so the ε reported is the one central
    DP-FedAvg reports for the same z and sampling.
    """

    def __init__(self, mechanism: Any):
        raise_problems("", config_problems(mechanism.config))
        self.mechanism = mechanism

    @property
    def reproducible(self) -> bool:
        return self.mechanism.config.reproducible_noise

    def plan(self, num_clients: int, threshold: float, dim: int) -> NoiseShare:
        """The round's device step for ``num_clients`` in the protocol; refuses a round past the target ε first."""
        self.mechanism.accountant.check(self.mechanism.accountant.count + 1,
                                        what=f"round {self.mechanism.rounds + 1}")
        from pocketlearn.federated.secagg import round_thresholds

        return NoiseShare(self.mechanism.clipper.bound, self.mechanism.config.noise_multiplier, num_clients,
                          round_thresholds(threshold, num_clients, None)[1], dim)

    def generator(self, rnd: int, client: int) -> torch.Generator:
        """Client ``client``'s own noise stream: the OS CSPRNG (seed-derived only under ``reproducible_noise``)."""
        from pocketlearn.federated.privacy import noise

        if self.reproducible:
            return noise.derived_generator(self.mechanism.config.seed, rnd, client)
        return noise.secure_generator()

    def secure_sum(self, updates: RoundUpdates, *, threshold: float, neighbours: int | None, seed: int,
                   drop_after_masking: Collection[int] = frozenset(), ledger: Any = None) -> dict[str, Tensor]:
        """Simulated clients: each clips, adds its share and masks its row; the noisy sum per parameter.

        ``drop_after_masking``: row positions whose masked input never arrives (their masks are removed).
        """
        from pocketlearn.federated.secagg import round_thresholds
        from pocketlearn.federated.secagg.run import secure_sum

        names = sorted(updates.deltas)
        flat = torch.cat([updates.deltas[n].flatten(1) for n in names], dim=1)  # (K, D)
        plan = self.plan(len(updates), threshold, flat.shape[1])
        rnd = self.mechanism.rounds + 1
        vectors = [plan.apply(row, self.generator(rnd, int(c))) for row, c in zip(flat, updates.client_ids,
                                                                                    strict=True)]
        total = secure_sum(vectors, threshold=round_thresholds(threshold, len(updates), neighbours)[0],
                           clip=plan.field_range, neighbours=neighbours, drop_after_masking=drop_after_masking,
                           seed=seed, bits=BITS, ledger=ledger, min_survivors=plan.threshold)
        return _split(torch.from_numpy(total), names, [updates.deltas[n][0].shape for n in names])

    def release(self, sums: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The private mean from the unmasked noisy sum: divided by the expected clients; charges the accountant."""
        means = {n: s.to(torch.float32) / self.mechanism.expected_clients for n, s in sums.items()}
        self.mechanism.accountant.step()
        self.mechanism.rounds += 1
        return means


def _split(total: Tensor, names: Sequence[str], shapes: Sequence[torch.Size]) -> dict[str, Tensor]:
    sizes = [math.prod(s) for s in shapes]
    return {n: part.reshape(s) for n, part, s in zip(names, total.split(sizes), shapes, strict=True)}
