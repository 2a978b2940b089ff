"""Devices over simulated time: when each client can train, and how fast its own device is.

Phones train mostly at night, charging, on Wi-Fi (Bonawitz et al., "Towards Federated Learning at Scale", 2019;
FedScale's device traces), so who is available depends on the hour in each client's time zone.
:class:`DiurnalTrace` draws each client's time zone and nightly charging window from (seed, client id);
:class:`CsvTrace` reads measured windows from a file. Both answer, for every client at once, "who is available
at simulated second t". :func:`speed_factors` gives each client its own device speed around its class's, from
a heavy-tailed distribution (a few slow devices set a synchronous round's pace).

CSV trace format: a header line ``client,start_s,end_s`` and one availability window per line, in seconds
within a period that repeats (``devices.trace_period_s``, a day by default); run client c follows trace client
``c mod (number of trace clients)``, trace clients taken in order of first appearance.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from pocketlearn.errors import ConfigError

DAY_S = 86_400.0
# Share of the world's online population by UTC offset (hours), coarsely: the Americas, Europe/Africa, Asia.
_ZONES = np.array([-8, -7, -6, -5, -4, -3, 0, 1, 2, 3, 5, 6, 7, 8, 9, 10])
_ZONE_SHARE = np.array([4, 2, 4, 6, 2, 4, 4, 9, 6, 4, 14, 3, 6, 24, 6, 2], dtype=float)


class Trace(Protocol):
    def available(self, at_s: float) -> np.ndarray: ...  # (N,) bool: who can train at simulated second at_s


@dataclass(frozen=True)
class DiurnalTrace:
    """Each client charges nightly in its own time zone: a window starting ~22:30 local, lasting ~7.5 h.

    Start and length are normal (sd 1.5 h, length between 2 and 12 h); outside the window a client is
    available with probability ``daytime`` in any given hour (a phone left on a charger).
    """

    num_clients: int
    seed: int
    daytime: float = 0.05
    _offset_h: np.ndarray = field(init=False, repr=False)  # local hour = UTC hour + offset, float32
    _start_h: np.ndarray = field(init=False, repr=False)
    _length_h: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 11])
        zone = rng.choice(_ZONES, self.num_clients, p=_ZONE_SHARE / _ZONE_SHARE.sum())
        object.__setattr__(self, "_offset_h", zone.astype(np.float32))
        object.__setattr__(self, "_start_h", rng.normal(22.5, 1.5, self.num_clients).astype(np.float32) % 24)
        length = np.clip(rng.normal(7.5, 1.5, self.num_clients), 2, 12).astype(np.float32)
        object.__setattr__(self, "_length_h", length)

    def available(self, at_s: float) -> np.ndarray:
        local = (at_s / 3600.0 + self._offset_h) % 24
        in_window = (local - self._start_h) % 24 < self._length_h
        hour = int(at_s // 3600)
        if self.daytime <= 0:
            return in_window
        awake = np.random.default_rng([self.seed, 12, hour]).random(self.num_clients, dtype=np.float32)
        return in_window | (awake < self.daytime)


@dataclass(frozen=True)
class CsvTrace:
    """Availability windows read from a file (format in the module docstring), repeating every ``period_s``."""

    num_clients: int
    windows: list[np.ndarray]  # per trace client: (W, 2) start and end seconds within the period
    period_s: float = DAY_S

    @classmethod
    def read(cls, path: str | Path, num_clients: int, period_s: float = DAY_S) -> CsvTrace:
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as err:
            raise ConfigError(f"devices.trace: cannot read {path}: {err}") from None
        if not rows or set(rows[0]) != {"client", "start_s", "end_s"}:
            raise ConfigError(f"devices.trace: {path} needs a header 'client,start_s,end_s' and one window a line")
        by_client: dict[str, list[tuple[float, float]]] = {}
        for line, row in enumerate(rows, start=2):
            try:
                start, end = float(row["start_s"]), float(row["end_s"])
            except ValueError:
                raise ConfigError(f"devices.trace: {path} line {line}: start_s and end_s must be numbers") from None
            if not 0 <= start < end <= period_s:
                raise ConfigError(f"devices.trace: {path} line {line}: a window needs 0 <= start_s < end_s <= "
                                  f"the period ({period_s:g} s, devices.trace_period_s), got {start:g}, {end:g}")
            by_client.setdefault(row["client"], []).append((start, end))
        return cls(num_clients, [np.array(w, dtype=np.float64) for w in by_client.values()], period_s)

    def available(self, at_s: float) -> np.ndarray:
        t = at_s % self.period_s
        now = np.array([bool(((w[:, 0] <= t) & (t < w[:, 1])).any()) for w in self.windows])
        return now[np.arange(self.num_clients) % len(self.windows)]


def make_trace(spec: str, num_clients: int, seed: int, period_s: float = DAY_S) -> Trace:
    """``"diurnal"`` or the path of a CSV trace."""
    if spec == "diurnal":
        return DiurnalTrace(num_clients, seed)
    return CsvTrace.read(spec, num_clients, period_s)


def speed_factors(num_clients: int, spread: float, seed: int) -> np.ndarray | None:
    """Each client's device speed relative to its class: LogNormal with mean 1 and log-spread ``spread``.

    Its compute and bandwidth are its class's times this factor (None when ``spread`` is 0: every device of a
    class alike). float32, 4 bytes a client.
    """
    if spread <= 0:
        return None
    draws = np.random.default_rng([seed, 13]).lognormal(-spread**2 / 2, spread, num_clients)
    return draws.astype(np.float32)
