"""Validation shared by the strategies' configs: every bad value is reported at once, by name."""

from __future__ import annotations

import math
from collections.abc import Callable

from pocketlearn.errors import ConfigError

WEIGHTINGS = ("samples", "uniform")


class Checked:
    """Mixin for a strategy dataclass: ``__post_init__`` raises one ConfigError listing all ``problems()``."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid value at once (subclasses extend the list)."""
        return []


def number_problem(name: str, value: object, ok: Callable[[float], bool], want: str) -> list[str]:
    """``[message]`` unless ``value`` is a finite real number (not a bool) for which ``ok`` holds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and ok(value):
        return []
    return [f"{name} should be a number {want}, got {value!r}"]


def weighting_problem(weighting: object) -> list[str]:
    if weighting in WEIGHTINGS:
        return []
    return [f"weighting should be one of {list(WEIGHTINGS)}, got {weighting!r}"]
