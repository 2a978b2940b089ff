"""The IDS experiment.

Frozen cloud model vs. on-device updates on drift vs. federated sharing, on the same deterministic streams;
prequential (test-then-train) accuracy, detection delays and memory per update.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketlearn.apps.ids.data import Table, load_kdd, load_kdd_csv, load_phishing
from pocketlearn.apps.ids.device import DeviceLearner, LearnerConfig
from pocketlearn.apps.ids.federated import IdsFederation
from pocketlearn.apps.ids.model import BaseModelConfig, accuracy, train_base_model
from pocketlearn.apps.ids.stream import Scenario, ScenarioConfig, build_scenario
from pocketlearn.devices import DeviceProfile, get_device

MODES = ("frozen", "on-device", "federated")


@dataclass(frozen=True)
class IdsConfig:
    data: str = "kdd"  # kdd | phishing | path to a CSV in the KDD / NSL-KDD layout
    device: str = "phone-1g"
    scenario: ScenarioConfig = ScenarioConfig()
    learner: LearnerConfig = LearnerConfig()
    base: BaseModelConfig = BaseModelConfig()
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    sync_every: int = 50
    rolling: int = 50


def load_ids_config(path: str | Path) -> IdsConfig:
    """An :class:`IdsConfig` from TOML: top-level fields, and ``[scenario]``, ``[learner]``, ``[base]`` tables."""
    import tomllib

    from pocketlearn.bundled import config_path
    from pocketlearn.errors import ConfigError

    try:
        raw = tomllib.loads(config_path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read IDS config {path}: {err}") from None
    sections = {"scenario": ScenarioConfig, "learner": LearnerConfig, "base": BaseModelConfig}
    try:
        parts = {k: cls(**{f: _frozen(v) for f, v in raw.pop(k, {}).items()}) for k, cls in sections.items()}
        return IdsConfig(**raw, **parts)
    except TypeError as err:
        raise ConfigError(f"IDS config {path}: {err}; the fields are those of IdsConfig, ScenarioConfig, "
                          "LearnerConfig and BaseModelConfig (see examples/ids.toml)") from None


def _frozen(value: Any) -> Any:
    """TOML arrays as the tuples the frozen configs hold (nested too: scenario phases)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


@dataclass
class ModeResult:
    """Per-device 0/1 correctness in stream order, plus what the devices did."""

    correct: list[np.ndarray]
    detections: list[list[int]]
    updates: list[list[Any]]

    def accuracy(self) -> float:
        return float(np.concatenate(self.correct).mean())

    def accuracy_after(self, onsets: list[int]) -> float:
        return float(np.concatenate([c[o:] for c, o in zip(self.correct, onsets, strict=True)]).mean())


@dataclass
class IdsResult:
    config: IdsConfig
    scenario: Scenario
    cloud_accuracy: float
    modes: dict[str, ModeResult]
    federated_rounds: int = 0
    federated_bytes: int = 0

    def first_onsets(self) -> list[int]:
        return [min(s.onsets.values()) for s in self.scenario.streams]

    def detection_delays(self, mode: str = "on-device") -> dict[str, list[int | None]]:
        """Stream positions from each drift event to the detector's first alarm after it (None: never)."""
        out: dict[str, list[int | None]] = {}
        for s, det in zip(self.scenario.streams, self.modes[mode].detections, strict=True):
            for event, onset in s.onsets.items():
                after = [p - onset for p in det if p >= onset]
                out.setdefault(event, []).append(min(after) if after else None)
        return out

    def false_alarms(self, mode: str = "frozen") -> int:
        """Alarms before the first drift event (the stable prefix), summed over devices."""
        return sum(sum(p < o for p in det) for det, o in zip(self.modes[mode].detections, self.first_onsets(),
                                                                strict=True))

    def peak_update_bytes(self) -> int:
        return max((u.peak_bytes for ups in self.modes["on-device"].updates for u in ups), default=0)


def load_table(data: str) -> Table:
    if data == "kdd":
        return load_kdd()
    if data == "phishing":
        return load_phishing()
    return load_kdd_csv(data)


def run_mode(mode: str, base: Any, scenario: Scenario, config: IdsConfig, device: DeviceProfile,
             workdir: Path) -> tuple[ModeResult, IdsFederation | None]:
    """Run every device's stream in lock-step (position by position) under one mode."""
    learners = []
    for s in scenario.streams:
        learner = DeviceLearner(copy.deepcopy(base), config.learner, device, update=mode != "frozen",
                                checkpoint=workdir / mode / f"device-{s.device}.pt")
        learner.device_index = s.device  # type: ignore[attr-defined]
        learners.append(learner)
    federation = IdsFederation(base, config.strategy, **config.strategy_options) if mode == "federated" else None
    correct = [np.zeros(len(s), bool) for s in scenario.streams]
    for t in range(max(len(s) for s in scenario.streams)):
        for s, learner, c in zip(scenario.streams, learners, correct, strict=True):
            if t < len(s):
                c[t] = learner.observe(s.x[t], int(s.y[t]))
        if federation is not None and (t + 1) % config.sync_every == 0:
            federation.sync(learners)
    return ModeResult(correct, [d.detections for d in learners], [d.updates for d in learners]), federation


def run_ids(config: IdsConfig = IdsConfig(), modes: tuple[str, ...] = MODES, *, device: DeviceProfile | None = None,
            workdir: str | Path | None = None) -> IdsResult:
    """Train the cloud model, build the streams, and run each mode on them (one torch thread: tiny tensors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_ids(config, modes, device, workdir)
    finally:
        torch.set_num_threads(threads)


def _run_ids(config: IdsConfig, modes: tuple[str, ...], device: DeviceProfile | None, workdir: str | Path | None
             ) -> IdsResult:
    device = device or get_device(config.device)
    table = load_table(config.data)
    scenario = build_scenario(table, config.scenario)
    base = train_base_model(scenario.cloud_x, scenario.cloud_y, len(scenario.classes), config.base)
    result = IdsResult(config, scenario, accuracy(base, scenario.cloud_x, scenario.cloud_y), {})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        for mode in modes:
            result.modes[mode], fed = run_mode(mode, base, scenario, config, device, root)
            if fed is not None:
                result.federated_rounds, result.federated_bytes = fed.rounds, fed.uploaded_bytes
    return result


def rolling_accuracy(correct: np.ndarray, width: int) -> np.ndarray:
    """Windowed prequential accuracy: mean correctness over the last ``width`` positions."""
    c = np.cumsum(np.concatenate([[0.0], correct.astype(float)]))
    idx = np.arange(1, len(correct) + 1)
    lo = np.maximum(idx - width, 0)
    return (c[idx] - c[lo]) / (idx - lo)
