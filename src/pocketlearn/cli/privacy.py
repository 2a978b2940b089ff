"""``pocketlearn privacy``: the ε a DP-FedAvg run spends, or the noise multiplier a target ε needs.

Accounted as a run charges it: each round draws ``--per-round`` clients as a fixed-size set without replacement
from ``--clients`` (the clients that can be sampled: those whose device can train), replace-one neighbouring.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def privacy_command(
    noise: Annotated[float | None, typer.Option(min=0, help="Noise multiplier z (noise std / clip).")] = None,
    clients: Annotated[int, typer.Option(min=1, help="Clients that can be sampled (devices that can train).")] = 1000,
    per_round: Annotated[int, typer.Option(min=1, help="Clients drawn per round (fixed size, no replacement).")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of the run.")] = 1000,
    delta: Annotated[float, typer.Option(min=0, max=1, help="The delta of (epsilon, delta)-DP.")] = 1e-5,
    target_epsilon: Annotated[float | None, typer.Option(min=0, help="Calibrate z for this ε (with --noise: "
                                                                     "how many rounds fit).")] = None,
    accountant: Annotated[str, typer.Option(help="Accountant: rdp (pld cannot account fixed-size sampling; it "
                                                 "applies only when every client takes part each round).")] = "rdp",
) -> None:
    """Print ε of a run for a noise multiplier, or calibrate z for a target ε (RDP; PLD where it applies)."""
    from pocketlearn.federated.privacy.config import ACCOUNTANTS  # dp-accounting: imported when asked for

    if accountant not in ACCOUNTANTS:
        raise typer.BadParameter(f"should be one of {list(ACCOUNTANTS)}, got {accountant!r}", param_hint="--accountant")
    if noise is None and target_epsilon is None:
        raise typer.BadParameter("give --noise (to get ε) or --target-epsilon (to get the noise)", param_hint="--noise")
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting logs each RDP order it drops
    title = f"{min(per_round, clients)} of {clients} clients per round, {rounds} rounds, delta = {delta:g}"
    if noise is None:
        assert target_epsilon is not None
        Console().print(calibration_table(target_epsilon, clients, per_round, rounds, delta, accountant, title))
    else:
        Console().print(epsilon_table(noise, clients, per_round, rounds, delta, target_epsilon, title))


def epsilon_table(noise: float, clients: int, per_round: int, rounds: int, delta: float,
                  target_epsilon: float | None, title: str) -> Table:
    from pocketlearn.federated.privacy.accountant import central_round_event, epsilon, make_accountant, rounds_within
    from pocketlearn.federated.privacy.config import ACCOUNTANTS

    event = central_round_event(noise, clients, per_round)
    table = Table(title=f"noise multiplier {noise:g}, {title}")
    for col in ("accountant", "epsilon", *([f"rounds within ε {target_epsilon:g}"] if target_epsilon else [])):
        table.add_column(col, justify="left" if col == "accountant" else "right")
    for kind in ACCOUNTANTS:
        if not make_accountant(kind).supports(event):
            continue  # PLD: no fixed-size sampling in dp-accounting
        row = [kind, f"{epsilon(noise, clients, per_round, rounds, delta, kind):.4g}"]
        if target_epsilon:
            row.append(f"{rounds_within(event, target_epsilon, delta, kind):,}")
        table.add_row(*row)
    return table


def calibration_table(target_epsilon: float, clients: int, per_round: int, rounds: int, delta: float,
                      accountant: str, title: str) -> Table:
    from pocketlearn.federated.privacy.accountant import calibrate_noise, epsilon

    z = calibrate_noise(target_epsilon, delta, clients, per_round, rounds, accountant)
    table = Table(title=f"target ε {target_epsilon:g}, {title}")
    for col in ("accountant", "noise multiplier", "epsilon"):
        table.add_column(col, justify="left" if col == "accountant" else "right")
    table.add_row(accountant, f"{z:.4g}", f"{epsilon(z, clients, per_round, rounds, delta, accountant):.4g}")
    return table
