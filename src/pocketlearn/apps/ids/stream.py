"""Deterministic drifting traffic.

A cloud training part with some attack types, and one stream per device in
which the other types appear over time (each device at its own positions, so federated sharing can help).

Rows are used without replacement: nothing a device is tested on was seen by the cloud model, and a row appears
once in the device's stream, so prequential accuracy is an honest test-then-train score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocketlearn.apps.ids.data import Standardizer, Table
from pocketlearn.errors import ConfigError, DataError, Validated


@dataclass(frozen=True)
class ScenarioConfig(Validated):
    """How the data is split between cloud and devices, and when drift happens on each device.

    ``phases`` lists the attack types each phase introduces; phase k starts on device d at
    ``first_onset + k * phase_gap + d * stagger`` stream positions. Types in no phase are ``known`` (cloud) types.
    For a table without attack types (Phishing), drift is a concept change instead: after ``first_onset`` the
    label of rows with a high ``drift_feature`` is flipped (the attackers adapted).
    """

    known: tuple[str, ...] = ("back", "satan", "guess_passwd")
    phases: tuple[tuple[str, ...], ...] = (("portsweep",), ("buffer_overflow", "land", "rootkit-imap"))
    devices: int = 3
    cloud_fraction: float = 0.4
    first_onset: int = 120
    phase_gap: int = 200
    stagger: int = 60
    drift_feature: str = "anchor_from_other_domain"
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.devices < 1:
            out.append(f"devices must be >= 1, got {self.devices}")
        if not 0.05 <= self.cloud_fraction <= 0.9:
            out.append(f"cloud_fraction must be in [0.05, 0.9], got {self.cloud_fraction}")
        if self.first_onset < 1 or self.phase_gap < 1 or self.stagger < 0:
            out.append("first_onset and phase_gap must be >= 1 and stagger >= 0")
        return out


@dataclass
class DeviceStream:
    """One device's traffic in arrival order; ``onsets`` maps a drift event to its first stream position."""

    device: int
    x: np.ndarray
    y: np.ndarray
    onsets: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Scenario:
    """Cloud training data, the standardiser fitted on it, and every device's stream (all standardised)."""

    cloud_x: np.ndarray
    cloud_y: np.ndarray
    streams: list[DeviceStream]
    classes: list[str]
    known: list[str]
    scaler: Standardizer
    name: str


def _class_ids(table: Table, names: Sequence[str]) -> list[int]:
    missing = [n for n in names if n not in table.classes]
    if missing:
        raise ConfigError(f"attack types {missing} are not in the data (it has {table.classes}); fix known/phases")
    return [table.classes.index(n) for n in names]


def build_scenario(table: Table, config: ScenarioConfig = ScenarioConfig()) -> Scenario:
    """Split ``table`` into a cloud part and drifting device streams, deterministically from ``config.seed``."""
    if table.name == "phishing" or not set(config.known) <= set(table.classes):
        return _concept_drift_scenario(table, config)
    rng = np.random.default_rng(config.seed)
    known = _class_ids(table, config.known)
    phases = [_class_ids(table, p) for p in config.phases]
    listed = set(known) | {c for p in phases for c in p}
    if len(listed) < len(known) + sum(len(p) for p in phases):
        raise ConfigError("an attack type is listed twice in known/phases; give each type one place")
    cloud_idx, device_pools = [], [dict[int, np.ndarray]() for _ in range(config.devices)]
    for c in sorted(listed):
        idx = rng.permutation(np.flatnonzero(table.y == c))
        if c in known:
            n_cloud = int(round(config.cloud_fraction * len(idx)))
            cloud_idx.append(idx[:n_cloud])
            idx = idx[n_cloud:]
        for d, part in enumerate(np.array_split(idx, config.devices)):
            device_pools[d][c] = part
    cloud = rng.permutation(np.concatenate(cloud_idx))
    scaler = Standardizer.fit(table.x[cloud])
    streams = []
    for d, pools in enumerate(device_pools):
        onsets = {"+" + "+".join(table.classes[c] for c in p): config.first_onset + k * config.phase_gap
                  + d * config.stagger for k, p in enumerate(phases)}
        order = _interleave(pools, known, phases, list(onsets.values()), rng)
        streams.append(DeviceStream(d, scaler(table.x[order]), table.y[order], onsets))
    return Scenario(scaler(table.x[cloud]), table.y[cloud], streams, table.classes,
                    list(config.known), scaler, table.name)


def _interleave(pools: dict[int, np.ndarray], known: list[int], phases: list[list[int]], onsets: list[int],
                rng: np.random.Generator) -> np.ndarray:
    """Arrival order of one device's rows.

    Only known types before the first onset, then every active type drawn in proportion to what is left of it,
    so that each pool runs out near the end of the stream.
    """
    left = {c: list(pools[c]) for c in pools}
    active = list(known)
    order: list[int] = []
    pending = sorted(zip(onsets, phases, strict=True))
    while any(left[c] for c in left):
        while pending and len(order) >= pending[0][0]:
            active += pending.pop(0)[1]
        choices = [c for c in active if left[c]]
        if not choices:
            if not pending:
                break
            active += pending.pop(0)[1]  # known traffic ran out before the next onset: bring it forward
            continue
        weights = np.asarray([len(left[c]) for c in choices], dtype=np.float64)
        c = choices[rng.choice(len(choices), p=weights / weights.sum())]
        order.append(left[c].pop())
    return np.asarray(order, dtype=np.int64)


def _concept_drift_scenario(table: Table, config: ScenarioConfig) -> Scenario:
    """For data without attack types: same split, and after the onset the labels of one sub-population flip."""
    if config.drift_feature not in table.feature_names:
        raise DataError(f"{table.name}: the attack types {list(config.known)} are not in the data "
                        f"(it has {table.classes}) and it has no column {config.drift_feature!r} for a concept "
                        "drift; set ScenarioConfig.known to some of its types")
    rng = np.random.default_rng(config.seed)
    idx = rng.permutation(len(table))
    n_cloud = int(round(config.cloud_fraction * len(idx)))
    cloud, rest = idx[:n_cloud], idx[n_cloud:]
    scaler = Standardizer.fit(table.x[cloud])
    col = table.feature_names.index(config.drift_feature)
    threshold = float(np.median(table.x[:, col]))
    streams = []
    for d, part in enumerate(np.array_split(rest, config.devices)):
        onset = min(config.first_onset + d * config.stagger, max(len(part) - 1, 0))
        y = table.y[part].copy()
        flip = (table.x[part, col] > threshold) & (np.arange(len(part)) >= onset)
        y[flip] = 1 - y[flip]
        streams.append(DeviceStream(d, scaler(table.x[part]), y, {f"flip:{config.drift_feature}": onset}))
    return Scenario(scaler(table.x[cloud]), table.y[cloud], streams, table.classes, list(table.classes), scaler,
                    table.name)
