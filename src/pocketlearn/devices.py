"""Device profiles: what a device can spend on training (memory, compute, bandwidth, availability)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pocketlearn.errors import ConfigError, raise_problems

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count such as ``512MiB``, ``1.5GB`` or ``4096``."""
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"cannot read {value!r} as a size; write e.g. '512MiB', '4GB' or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    """Human-readable binary size (``1.5 MiB``)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class DeviceProfile:
    """A device class: the memory a training step may use, how fast it computes and talks, how often it is free.

    ``compute`` is relative to a 2-core laptop CPU (1.0); federated simulation scales measured step
    times by it. ``availability`` is the probability that the device can take part in a round.
    """

    name: str
    memory_budget_bytes: int
    compute: float = 1.0
    uplink_bytes_per_s: float = 1e6
    downlink_bytes_per_s: float = 5e6
    availability: float = 1.0
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.memory_budget_bytes <= 0:
            problems.append(f"memory_budget_bytes must be positive, got {self.memory_budget_bytes}")
        if self.compute <= 0:
            problems.append(f"compute must be positive, got {self.compute}")
        if self.uplink_bytes_per_s <= 0 or self.downlink_bytes_per_s <= 0:
            problems.append("uplink/downlink bandwidth must be positive")
        if not 0.0 < self.availability <= 1.0:
            problems.append(f"availability must be in (0, 1], got {self.availability}")
        raise_problems(f"device {self.name!r}", problems)


_MiB = 1024**2
PRESETS: dict[str, DeviceProfile] = {
    p.name: p
    for p in [
        DeviceProfile("mcu-512k", 512 * 1024, compute=0.002, uplink_bytes_per_s=25e3, downlink_bytes_per_s=25e3,
                      availability=0.9, description="microcontroller (Cortex-M7 class), 512 KiB SRAM"),
        DeviceProfile("pi-zero-512m", 256 * _MiB, compute=0.05, uplink_bytes_per_s=2e6, downlink_bytes_per_s=5e6,
                      availability=0.95, description="Raspberry Pi Zero 2 W; half its 512 MB left for training"),
        DeviceProfile("phone-1g", 384 * _MiB, compute=0.15, uplink_bytes_per_s=1e6, downlink_bytes_per_s=4e6,
                      availability=0.5, description="budget phone, background-task memory limit"),
        DeviceProfile("phone-4g", 1536 * _MiB, compute=0.5, uplink_bytes_per_s=5e6, downlink_bytes_per_s=20e6,
                      availability=0.6, description="mid-range phone, charging and on Wi-Fi"),
        DeviceProfile("laptop-16g", 8192 * _MiB, compute=1.0, uplink_bytes_per_s=20e6, downlink_bytes_per_s=100e6,
                      availability=0.8, description="laptop, half its RAM for training"),
    ]
}


def load_profiles(path: str | Path) -> dict[str, DeviceProfile]:
    """Read user-defined profiles from a TOML file with one ``[devices.NAME]`` table per device."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read device file {path}: {err}") from err
    tables = data.get("devices")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: expected one or more [devices.NAME] tables")
    known = set(DeviceProfile.__dataclass_fields__) - {"name"}
    profiles = {}
    for name, table in tables.items():
        unknown = set(table) - known - {"memory_budget"}
        if unknown:
            raise ConfigError(f"{path}: device {name!r} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        table = dict(table)
        if "memory_budget" in table:
            table["memory_budget_bytes"] = parse_bytes(table.pop("memory_budget"))
        if "memory_budget_bytes" not in table:
            raise ConfigError(f"{path}: device {name!r} needs memory_budget (e.g. '512MiB')")
        profiles[name] = DeviceProfile(name=name, **table)
    return profiles


def get_device(name: str, profiles_file: str | Path | None = None) -> DeviceProfile:
    """A preset by name, or a device from a user's TOML file."""
    profiles = dict(PRESETS)
    if profiles_file is not None:
        profiles.update(load_profiles(profiles_file))
    if name not in profiles:
        raise ConfigError(f"unknown device {name!r}; choose one of {sorted(profiles)} or define it in a TOML file")
    return profiles[name]
