"""``pocketlearn report RUN``: plots of a federated run from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def report_command(run: Annotated[Path, typer.Argument(help="A run folder (runs/<name>).")]) -> None:
    """Write accuracy.png (vs round and vs bytes) and participation.png into RUN (a UI run: ui-curve.png)."""
    from pocketlearn.apps.ui.report import CURVE_FILE
    from pocketlearn.errors import ConfigError
    from pocketlearn.federated.report import plot_run

    console = Console()
    if (run / CURVE_FILE).exists():
        from pocketlearn.apps.ui.report import plot_curve, read_curve

        console.print(f"wrote {plot_curve(read_curve(run), run / 'ui-curve.png')}")
        return
    if not (run / "metrics.jsonl").exists():
        raise ConfigError(f"{run} has no metrics.jsonl (nor {CURVE_FILE}); pass a run folder such as runs/<name>")
    for path in plot_run(run):
        console.print(f"wrote {path}")
    for line in privacy_lines(run):
        console.print(line)


def privacy_lines(run: Path) -> list[str]:
    """What a private run's metrics say about its privacy: ε spent, and plainly when the noise is not secret."""
    from pocketlearn.federated.metrics import read_metrics
    from pocketlearn.federated.privacy.config import NOT_PRIVATE

    records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("epsilon") is not None]
    if not records:
        return []
    lines = [f"privacy: ε = {records[-1]['epsilon']:.4g} after round {records[-1]['round']}"]
    if any(r.get("dp_noise") == NOT_PRIVATE for r in records):
        lines.append(f"[bold red]warning: DP {NOT_PRIVATE}[/] (dp.reproducible_noise = true): anyone with the "
                     "config can subtract the noise, so the ε above protects nobody")
    return lines
