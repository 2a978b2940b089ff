"""``pocketlearn config check``: the verdict every engine gives a run config, without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

config_app = typer.Typer(help="Run configs: check one before a run.", no_args_is_help=True)


@config_app.command("check")
def check_command(
    config: Annotated[Path, typer.Argument(help="Run config (TOML), or a bundled example by name.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set clients_per_round=16.")
                    ] = None,
    deploy: Annotated[bool, typer.Option(help="Also refuse what only a simulation can do (as `fed serve` does).")
                      ] = False,
) -> None:
    """Check CONFIG as `fed simulate`, `fed serve` and the Ray engine do before a round; exit 2 on a problem."""
    from pocketlearn.errors import raise_problems
    from pocketlearn.federated.config import load_config
    from pocketlearn.federated.flower.deploy import deployment_problems

    cfg = load_config(config, list(set_ or []))  # every problem at once, as the engines report it
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"{escape(str(config))}: ok for `fed simulate` ({cfg.rounds} rounds of {cfg.clients_per_round} "
              f"clients, engine {cfg.engine})")
    if cfg.secagg.enabled:
        out.print(escape(secure_rounds(cfg.secagg.threshold, cfg.clients_per_round, cfg.secagg.neighbours)))
    problems = deployment_problems(cfg)
    if deploy:
        raise_problems(f"{config} cannot run on real devices", problems, lines=True)
    out.print("ok for `fed serve` (real devices)" if not problems else
              "not for `fed serve` (real devices):\n  " + "\n  ".join(escape(p) for p in problems))


def secure_rounds(threshold: float, clients: int, neighbours: int | None) -> str:
    """What ``secagg.threshold`` means for a full round of ``clients``, in counts."""
    from pocketlearn.federated.secagg import round_thresholds, share_holders

    shares, survivors = round_thresholds(threshold, clients, neighbours)
    holders = share_holders(clients, neighbours)
    graph = "all pairs" if holders == clients else f"SecAgg+, {holders - 1} neighbours each"
    return (f"secure aggregation ({graph}): a round of {clients} unmasks its sum once {survivors} masked inputs "
            f"arrived, and a dropped client's masks once {shares} of its {holders} share holders answer")
