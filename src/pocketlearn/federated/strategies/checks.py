"""Checks the strategies share beyond :func:`pocketlearn.errors.number_problem`: how updates are weighted."""

from __future__ import annotations

WEIGHTINGS = ("samples", "uniform")


def weighting_problem(weighting: object) -> list[str]:
    if weighting in WEIGHTINGS:
        return []
    return [f"weighting should be one of {list(WEIGHTINGS)}, got {weighting!r}"]
