"""Accuracy against epsilon for DP-FedAvg, and secure aggregation's extra bytes and time per client.

    python benchmarks/privacy.py           # writes results/privacy.{json,md} and docs/privacy.md
    python benchmarks/privacy.py --quick   # fewer rounds, smaller secure-aggregation runs (CI)

DP workload: digits, MLP 64-128-10, 200 clients (IID), 50 per round; for each target epsilon the noise
multiplier is calibrated with dp-accounting (RDP) for the run's sampling rate and rounds, and the epsilon the
accountant reports at the end is printed next to the accuracy. Secure aggregation: one round on the digits
MLP's update size (9,610 values), 5% of clients dropping after masking.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from harness import Bench, parser
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server, dp_population
from pocketlearn.federated.privacy import calibrate_noise
from pocketlearn.federated.secagg import measure_cost
from pocketlearn.progress import working

console = Console()
DELTA = 1e-5


def dp_run(target: float, rounds: int) -> dict[str, Any]:
    clients, per_round = 200, 50
    raw: dict[str, Any] = {"rounds": rounds, "clients_per_round": per_round, "client": {"lr": 0.1, "epochs": 2},
                           "data": {"name": "digits", "partition": "iid", "num_clients": clients},
                           "eval": {"every": rounds}}
    # calibrated for the clients the run can actually sample (the accountant's population), not all 200
    noise = 0.0 if math.isinf(target) else calibrate_noise(target, DELTA, dp_population(parse_config(raw)),
                                                           per_round, rounds)
    raw["strategy"] = {"name": "fedavg"} if noise == 0 else {"name": "dp-fedavg", "options": {
        "server_lr": 1.0, "dp": {"clip": 0.5, "noise_multiplier": noise, "delta": DELTA, "target_epsilon": target}}}
    server, _ = build_server(parse_config(raw), None)
    records = server.run(rounds)
    return {"target_epsilon": target, "noise_multiplier": noise, "epsilon": records[-1].epsilon or math.inf,
            "accuracy": records[-1].eval["accuracy"]}


def secagg_rows(sizes: list[tuple[int, int | None]]) -> list[dict[str, Any]]:
    rows = []
    for n, neighbours in sizes:
        cost = measure_cost(n, 9610, neighbours=neighbours, drop_fraction=0.05)
        rows.append({"clients": n, "graph": f"{neighbours} neighbours" if neighbours else "all pairs",
                     "plain_bytes": cost.plain_bytes, "extra_sent_bytes": cost.extra_sent_bytes,
                     "received_bytes": cost.received_bytes, "client_ms": 1e3 * cost.client_seconds,
                     "server_s": cost.server_seconds})
    return rows


def table(dp: list[dict[str, Any]], sec: list[dict[str, Any]], rounds: int) -> str:
    lines = [f"DP-FedAvg on digits, 200 clients, 50 per round, {rounds} rounds, clip 0.5, delta {DELTA:g}; "
             "measured by `python benchmarks/privacy.py`.", "",
             "| target ε | noise multiplier | ε spent (RDP) | final accuracy |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['target_epsilon']:g} | {r['noise_multiplier']:.3f} | {r['epsilon']:.2f} | {r['accuracy']:.4f} |"
              for r in dp]
    lines += ["", "Secure aggregation, one round, 9,610 values per client (38 KB as float32), 5% drop after "
              "masking:", "", "| clients | masking graph | extra bytes sent | bytes received | client ms | server s |",
              "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['clients']} | {r['graph']} | {r['extra_sent_bytes']:,.0f} | {r['received_bytes']:,.0f} | "
              f"{r['client_ms']:.1f} | {r['server_s']:.2f} |" for r in sec]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parser(__doc__, "fewer rounds, smaller secure aggregation (CI)").parse_args()
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # dp-accounting logs every Renyi order it drops
    rounds = 5 if args.quick else 30
    with working(console, "DP-FedAvg at several epsilons"):
        dp = [dp_run(eps, rounds) for eps in (1.0, 4.0, 8.0, math.inf)]
    sizes = [(10, None), (100, None)] if args.quick else [(10, None), (100, None), (100, 14), (1000, 20)]
    with working(console, "secure aggregation rounds"):
        sec = secagg_rows(sizes)
    text = table(dp, sec, rounds)
    Bench("privacy", args.quick).publish({"dp": dp, "secagg": sec}, text)
    console.print(text)


if __name__ == "__main__":
    main()
