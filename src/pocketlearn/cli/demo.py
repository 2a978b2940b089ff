"""``pocketlearn demo``: the main job end to end on shipped data — private federated fine-tuning of a keyboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

# (command, why): what the demo suggests next (tests run the plan line as written)
NEXT_STEPS = (
    ("pocketlearn keyboard --no-dp", "no DP: partial rows"),
    ("pocketlearn keyboard --no-dp --update full", "every weight: more bytes"),
    ("pocketlearn plan --model cnn --device pi-zero-512m", "which methods fit a board"),
    ("pocketlearn fed simulate examples/phones.toml", "any run from a TOML"),
    ("make install-all", "the extras: LLMs, Ray, Flower devices, export"),
    ("pocketlearn generate --user Hamlet/HAMLET", "then: SmolLM2 on a device"),
)


def demo_command(
    users: Annotated[int, typer.Option(min=2, help="Shakespeare roles as users.")] = 100,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 12,
    clients_per_round: Annotated[int, typer.Option(min=1, help="Clients sampled per round.")] = 30,
    runs: Annotated[Path, typer.Option(help="Folder of run folders: the demo writes RUNS/demo.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Start over instead of resuming an interrupted demo.")] = True,
    pretrain_windows: Annotated[int | None, typer.Option(min=1, help="Pretrain on this many windows only "
                                                         "(a quick look; the full corpus is 19k).")] = None,
) -> None:
    """Pretrain a next-word model on public text, then fine-tune it with DP-FedAvg across Shakespeare users."""
    from pocketlearn.apps.keyboard.pretrain import PretrainConfig
    from pocketlearn.apps.keyboard.run import KeyboardConfig
    from pocketlearn.cli.keyboard import run_and_report

    console = Console()
    config = KeyboardConfig(name="demo", users=users, rounds=rounds, clients_per_round=clients_per_round,
                            pretraining=PretrainConfig(limit=pretrain_windows))
    console.print(Panel(
        f"A keyboard's next-word model (10,000 words) is pretrained on public text (the fortune database), then "
        f"fine-tuned across {users} Shakespeare roles, each a user with a phone (mixed 1 GB / 4 GB presets, "
        f"{config.dropout:.0%} drop out mid-round). Each round {clients_per_round} phones train the model's biases "
        f"on their own lines (the output bias learns which words these users type); the server clips each update, "
        f"adds Gaussian noise (DP-FedAvg, noise calibrated to ε ≤ {config.epsilon:g}) and averages. Accuracy is on "
        "each user's held-out last lines.", title="pocketlearn demo"))
    run_and_report(config, runs / "demo", console, fresh=fresh)
    width = max(len(command) for command, _ in NEXT_STEPS)
    console.print(Panel("\n".join(f"{command:<{width}}  # {why}" for command, why in NEXT_STEPS),
                        title="what to try next"))
