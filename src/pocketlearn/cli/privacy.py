"""``pocketlearn privacy``: the ε a DP-FedAvg run spends, or the noise multiplier a target ε needs."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def privacy_command(
    noise: Annotated[float | None, typer.Option(min=0, help="Noise multiplier z (noise std / clip).")] = None,
    rate: Annotated[float, typer.Option(min=0, max=1, help="Clients per round / clients (sampling rate q).")] = 0.01,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of the run.")] = 1000,
    delta: Annotated[float, typer.Option(min=0, max=1, help="The delta of (epsilon, delta)-DP.")] = 1e-5,
    target_epsilon: Annotated[float | None, typer.Option(min=0, help="Calibrate z for this ε (with --noise: "
                                                                     "how many rounds fit).")] = None,
    accountant: Annotated[str, typer.Option(help="Accountant for calibration: rdp or pld.")] = "rdp",
) -> None:
    """Print ε of a run for a noise multiplier (RDP and PLD side by side), or calibrate z for a target ε."""
    from pocketlearn.federated.privacy.config import ACCOUNTANTS  # dp-accounting: imported when asked for

    if accountant not in ACCOUNTANTS:
        raise typer.BadParameter(f"should be one of {list(ACCOUNTANTS)}, got {accountant!r}", param_hint="--accountant")
    if noise is None and target_epsilon is None:
        raise typer.BadParameter("give --noise (to get ε) or --target-epsilon (to get the noise)", param_hint="--noise")
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting logs each RDP order it drops
    title = f"q = {rate:g}, {rounds} rounds, delta = {delta:g}"
    if noise is None:
        assert target_epsilon is not None
        Console().print(calibration_table(target_epsilon, rate, rounds, delta, accountant, title))
    else:
        Console().print(epsilon_table(noise, rate, rounds, delta, target_epsilon, title))


def epsilon_table(noise: float, rate: float, rounds: int, delta: float, target_epsilon: float | None,
                  title: str) -> Table:
    from pocketlearn.federated.privacy.accountant import central_round_event, epsilon, rounds_within
    from pocketlearn.federated.privacy.config import ACCOUNTANTS

    table = Table(title=f"noise multiplier {noise:g}, {title}")
    for col in ("accountant", "epsilon", *([f"rounds within ε {target_epsilon:g}"] if target_epsilon else [])):
        table.add_column(col, justify="left" if col == "accountant" else "right")
    for kind in ACCOUNTANTS:
        row = [kind, f"{epsilon(noise, rate, rounds, delta, kind):.4g}"]
        if target_epsilon:
            row.append(f"{rounds_within(central_round_event(noise, rate), target_epsilon, delta, kind):,}")
        table.add_row(*row)
    return table


def calibration_table(target_epsilon: float, rate: float, rounds: int, delta: float, accountant: str,
                      title: str) -> Table:
    from pocketlearn.federated.privacy.accountant import calibrate_noise, epsilon

    z = calibrate_noise(target_epsilon, delta, rate, rounds, accountant)
    table = Table(title=f"target ε {target_epsilon:g}, {title}")
    for col in ("accountant", "noise multiplier", "epsilon"):
        table.add_column(col, justify="left" if col == "accountant" else "right")
    table.add_row(accountant, f"{z:.4g}", f"{epsilon(z, rate, rounds, delta, accountant):.4g}")
    return table
