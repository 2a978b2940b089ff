"""Robust aggregation under attack: final accuracy per strategy x attack x fraction of malicious clients.

    python benchmarks/robust.py           # writes results/robust.{json,md,png} and docs/robust.md
    python benchmarks/robust.py --quick   # 10 rounds, one seed, 20% malicious only (CI)

Workload: digits, MLP 64-128-10, 100 clients with Dirichlet (alpha 0.5) label skew, 20 per round, 1 local
epoch of SGD (lr 0.1), 30 rounds, final accuracy averaged over 3 seeds (split, initialisation, sampling and
which clients are malicious all change with the seed). A fixed share of the clients is malicious for the whole
run; a round holds however many of them the sampler drew. Every defence is set for up to 30% malicious
clients (f = 6 of 20 per round, trim 30% at each end) and norm bounding caps each update at about the honest
clients' norm (0.3). Attacks: sign-flip (-10 x own update), scale (100 x own update), ALIE (Baruch et al.
2019: benign mean - z·std, z from n and f), IPM (Xie et al. 2019: -eps x benign mean) with eps 0.1 and 10; ALIE
and IPM see the round's benign updates. The reference is FedAvg without attackers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import Bench, parser, pyplot, save_figure
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.progress import progress_bars

console = Console()
PER_ROUND = 20
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {"name": "fedavg"},
    "median": {"name": "median"},
    "trimmed-mean": {"name": "trimmed-mean", "options": {"trim_fraction": 0.3}},
    "norm-bounding": {"name": "norm-bounding", "options": {"max_norm": 0.3}},
    "krum": {"name": "krum", "options": {"byzantine": 6}},
    "multi-krum": {"name": "multi-krum", "options": {"byzantine": 6}},
}
ATTACKS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "sign-flip": {"kind": "sign-flip", "scale": 10.0},
    "scale": {"kind": "scale", "scale": 100.0},
    "ALIE": {"kind": "alie"},
    "IPM ε=0.1": {"kind": "ipm", "scale": 0.1},
    "IPM ε=10": {"kind": "ipm", "scale": 10.0},
}


def config(strategy: str, attack: str, fraction: float, rounds: int, seed: int) -> dict[str, Any]:
    chosen = ATTACKS[attack]
    raw = {"seed": seed, "rounds": rounds, "clients_per_round": PER_ROUND, "sampling_seed": 100 + seed,
           "client": {"lr": 0.1}, "checkpoint": False, "eval": {"every": rounds},
           "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 100, "seed": seed},
           "strategy": STRATEGIES[strategy]}
    if chosen is not None:
        raw["attack"] = {**chosen, "fraction": fraction, "seed": 200 + seed}
    return raw


def accuracy(raw: dict[str, Any]) -> float:
    server, _ = build_server(parse_config(raw), None)
    return float(server.run(raw["rounds"])[-1].eval["accuracy"])


def cells(fractions: list[float]) -> list[tuple[str, str, float | None]]:
    """(strategy, attack, fraction) to run; the clean run has no fraction."""
    return [(s, a, None if a == "none" else f) for s in STRATEGIES for a in ATTACKS
            for f in ([None] if a == "none" else fractions)]


def table(rows: list[dict[str, Any]], fractions: list[float], rounds: int, seeds: int) -> str:
    clean = {r["strategy"]: r["accuracy"] for r in rows if r["attack"] == "none"}
    acc = {(r["strategy"], r["attack"], r["fraction"]): r["accuracy"] for r in rows}
    attacks = [a for a in ATTACKS if a != "none"]
    lines = [f"Digits MLP, 100 clients, Dirichlet α = 0.5, {PER_ROUND} per round, {rounds} rounds, final accuracy "
             f"averaged over {seeds} seed(s); defences set for f = 6 malicious of 20. Reference: FedAvg without "
             f"attackers, **{clean['fedavg']:.3f}**. Measured by `python benchmarks/robust.py`.", "",
             "| strategy | malicious | no attack | " + " | ".join(attacks) + " | worst |",
             "|---|---:|---:|" + "---:|" * (len(attacks) + 1)]
    for s in STRATEGIES:
        for f in fractions:
            values = [acc[(s, a, f)] for a in attacks]
            lines.append(f"| {s} | {f:.0%} | {clean[s]:.3f} | " + " | ".join(f"{v:.3f}" for v in values)
                         + f" | {min(values):.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], fractions: list[float], path: Path) -> None:
    import numpy as np

    acc = {(r["strategy"], r["attack"], r["fraction"]): r["accuracy"] for r in rows}
    reference = acc[("fedavg", "none", None)]
    fig, axes = pyplot().subplots(1, len(fractions), figsize=(3.6 * len(fractions) + 2, 4.2), squeeze=False)
    for ax, f in zip(axes[0], fractions, strict=True):
        grid = np.array([[acc[(s, a, None if a == "none" else f)] for a in ATTACKS] for s in STRATEGIES])
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(ATTACKS)), list(ATTACKS), rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(STRATEGIES)), list(STRATEGIES) if ax is axes[0][0] else [], fontsize=8)
        ax.set_title(f"{f:.0%} malicious clients", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="final test accuracy")
    fig.suptitle(f"Robust aggregation on non-IID digits (Dirichlet 0.5); FedAvg without attack: {reference:.3f}",
                 fontsize=10)
    save_figure(fig, path, tight=False)


def main() -> None:
    args = parser(__doc__, "10 rounds, one seed, 20%% malicious (CI)").parse_args()
    rounds, seeds = (10, 1) if args.quick else (30, 3)
    fractions = [0.2] if args.quick else [0.1, 0.2, 0.3]
    todo = cells(fractions)
    rows, start = [], time.perf_counter()
    with progress_bars(console=console) as progress:
        task = progress.add_task("runs", total=len(todo))
        for strategy, attack, fraction in todo:
            progress.update(task, description=f"{strategy}: {attack} {fraction or ''}")
            per_seed = [accuracy(config(strategy, attack, fraction or 0.0, rounds, s)) for s in range(seeds)]
            rows.append({"strategy": strategy, "attack": attack, "fraction": fraction,
                         "accuracy": sum(per_seed) / seeds, "per_seed": per_seed})
            progress.advance(task)
    seconds = time.perf_counter() - start
    setup = {"rounds": rounds, "seeds": seeds, "fractions": fractions, "clients_per_round": PER_ROUND,
             "strategies": STRATEGIES, "attacks": ATTACKS, "seconds": seconds}
    text = table(rows, fractions, rounds, seeds)
    Bench("robust", args.quick).publish({"setup": setup, "rows": rows}, text,
                                        plot=lambda path: plot(rows, fractions, path), figure="robust aggregation")
    console.print(text)
    console.print(f"{len(todo) * seeds} runs in {seconds:.0f} s")


if __name__ == "__main__":
    main()
