"""``pocketlearn report RUN``: plots of a federated run from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def report_command(run: Annotated[Path, typer.Argument(help="A run folder (runs/<name>).")]) -> None:
    """Write accuracy.png (vs round and vs bytes) and participation.png into RUN."""
    from pocketlearn.errors import ConfigError
    from pocketlearn.federated.report import plot_run

    if not (run / "metrics.jsonl").exists():
        raise ConfigError(f"{run} has no metrics.jsonl; pass a run folder such as runs/<name>")
    for path in plot_run(run):
        Console().print(f"wrote {path}")
