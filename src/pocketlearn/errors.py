"""Errors that name the problem and the way out, and the helpers that collect a config's problems into one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


class PocketlearnError(Exception):
    """Base of every error pocketlearn raises on purpose."""


class ConfigError(PocketlearnError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class UnsupportedModelError(PocketlearnError, ValueError):
    """A training method cannot be applied to this model's architecture."""


class BudgetError(PocketlearnError):
    """No training method fits the device's memory budget."""


class TrainingError(PocketlearnError, RuntimeError):
    """Training diverged or produced an unusable value (a NaN loss, say)."""


class DataError(PocketlearnError, ValueError):
    """A data set is missing, malformed or of the wrong shape."""


def raise_problems(what: str, problems: Sequence[str], *, lines: bool = False) -> None:
    """Raise one ConfigError listing every problem, so a user fixes them all in one go; none: return.

    ``what`` names what was checked and heads the message (``"TrainerConfig: lr should be ..."``); ``""``: no head.
    ``lines``: one indented problem a line, for problems long enough to read as a list.
    """
    if not problems:
        return
    if lines:
        raise ConfigError(f"{what}:\n  " + "\n  ".join(problems))
    raise ConfigError(f"{what}: {'; '.join(problems)}" if what else "; ".join(problems))


class Validated:
    """Mixin for a config dataclass: ``__post_init__`` raises one ConfigError naming the class and all ``problems()``.

    Subclasses extend :meth:`problems` (``[*super().problems(), ...]``), so every check of a hierarchy runs.
    """

    def __post_init__(self) -> None:
        raise_problems(type(self).__name__, self.problems())

    def problems(self) -> list[str]:
        """Every invalid value at once (subclasses extend the list)."""
        return []


def number_problem(name: str, value: object, ok: Callable[[float], bool], want: str) -> list[str]:
    """``[message]`` unless ``value`` is a finite real number (not a bool) for which ``ok`` holds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and ok(value):
        return []
    return [f"{name} should be a number {want}, got {value!r}"]
