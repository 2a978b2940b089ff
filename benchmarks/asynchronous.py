"""Synchronous FedAvg against FedBuff at equal simulated time, on devices from microcontrollers to laptops.

    python benchmarks/asynchronous.py           # results/asynchronous.{json,md,png}, docs/federated.md's section
    python benchmarks/asynchronous.py --quick   # one seed, a shorter simulated budget (CI)

Workload: sklearn digits resampled over 100,000 clients (Dirichlet 0.3 label mix, 20 samples each on average),
MLP 64-128-10, one local epoch of SGD; devices 40% phone-1g, 40% phone-4g, 15% pi-zero-512m, 5% mcu-512k (a
round that waits for a microcontroller waits seconds for its upload), each device's speed its class's times
LogNormal(spread 1), available in its nightly charging window (the diurnal trace). Variants: synchronous FedAvg
with 20 clients a round, the same with a 1 s deadline (late clients left out), the same over-selecting 30% and
closing at 20 (production's answer to stragglers), and FedBuff (20 clients training at any moment, an update
every 10 arrivals, staleness discount (1 + tau)^-0.5). Every run gets the same simulated
budget; the test accuracy is measured after each round or server update. Printed: the simulated time each
variant needs to reach 95% of the best final accuracy, which variant gets there first and by how much, and each
variant's accuracy at the end of the budget.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from rich.console import Console

from harness import Bench, parser, pyplot, save_figure
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server

console = Console()
BASE: dict[str, Any] = {
    "clients_per_round": 20, "checkpoint": False, "model": {"name": "digits-mlp"},
    "data": {"name": "digits", "partition": "resample", "num_clients": 100_000, "alpha": 0.3, "mean_size": 20},
    "client": {"lr": 0.05, "batch_size": 8},
    "devices": {"mix": {"phone-1g": 0.4, "phone-4g": 0.4, "pi-zero-512m": 0.15, "mcu-512k": 0.05},
                "trace": "diurnal", "spread": 1.0},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "sync": {},
    "sync, 1 s deadline": {"devices": {**BASE["devices"], "deadline_s": 1.0}},
    "sync, 30% over-selected": {"devices": {**BASE["devices"], "overselect": 0.3}},
    "FedBuff": {"asynchronous": {"buffer": 10, "concurrency": 20}},
}
REACH = 0.95  # time to reach this fraction of the best final accuracy


def run(variant: str, seed: int, budget_s: float) -> list[tuple[float, float]]:
    """(simulated seconds, test accuracy) after each round or server update, until the budget is spent."""
    raw = {**BASE, **VARIANTS[variant], "name": f"async-{variant}", "seed": seed, "sampling_seed": seed + 1,
           "data": {**BASE["data"], "seed": seed}, "rounds": 100_000}
    server, _ = build_server(parse_config(raw), None)
    curve = []
    while server.clock_s < budget_s:
        record = server.run_round()  # eval.every = 1: each record carries its test accuracy
        curve.append((server.clock_s, record.eval["accuracy"]))
    return curve


def at(curve: list[tuple[float, float]], t: float) -> float:
    """The accuracy of the last model finished by simulated time ``t`` (0 before the first)."""
    return next((a for c, a in reversed(curve) if c <= t), 0.0)


def reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first simulated time the accuracy is at least ``target`` (None: never within the budget)."""
    return next((c for c, a in curve if a >= target), None)


def main() -> None:
    args = parser(__doc__, "one seed, 60 simulated seconds").parse_args()
    seeds, budget = ([0] if args.quick else [0, 1, 2]), (60.0 if args.quick else 300.0)
    started = time.perf_counter()
    curves = {v: [run(v, s, budget) for s in seeds] for v in VARIANTS}
    final = {v: statistics.mean(at(c, budget) for c in cs) for v, cs in curves.items()}
    target = REACH * max(final.values())
    times = {v: [reach(c, target) for c in cs] for v, cs in curves.items()}
    rows = ["| variant | updates in the budget | final accuracy (mean) | simulated s to reach "
            f"{target:.3f} (per seed) |", "|---|---:|---:|---|"]
    for v in VARIANTS:
        spans = ", ".join("never" if t is None else f"{t:.1f}" for t in times[v])
        rows.append(f"| {v} | {statistics.mean(len(c) for c in curves[v]):.0f} | {final[v]:.3f} | {spans} |")
    median = {v: statistics.median(budget if t is None else t for t in ts) for v, ts in times.items()}
    order = sorted(VARIANTS, key=lambda v: median[v])
    verdict = (f"Sooner to {target:.3f}: **{order[0]}**, {median[order[1]] / median[order[0]]:.1f}x sooner than "
               f"{order[1]} (median simulated time over seeds); FedBuff against the fastest synchronous variant: "
               f"{min(median[v] for v in VARIANTS if v != 'FedBuff') / median['FedBuff']:.2f}x.")
    text = (f"Measured by `python benchmarks/asynchronous.py` in {time.perf_counter() - started:.0f} s, "
            f"{len(seeds)} seed(s), a budget of {budget:.0f} simulated seconds.\n\n" + "\n".join(rows) + "\n\n"
            + verdict + "\n")
    Bench("asynchronous", args.quick).publish(
        {"curves": curves, "final": final, "reach": times, "verdict": verdict}, text,
        plot=lambda p: plot(curves, p), figure="test accuracy against simulated time, synchronous and FedBuff")
    console.print(text)


def plot(curves: dict[str, list[list[tuple[float, float]]]], path: Any) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for variant, runs in curves.items():
        for i, curve in enumerate(runs):
            ax.plot([c for c, _ in curve], [a for _, a in curve], color=f"C{list(curves).index(variant)}",
                    alpha=0.8, label=variant if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("simulated seconds (log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
