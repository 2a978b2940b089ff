"""Accuracy against bytes uploaded, for every codec, on one federated workload; and MeZO's seed exchange.

    python benchmarks/communication.py           # results/communication.{json,md,png}, docs/communication.md
    python benchmarks/communication.py --quick   # fewer rounds (CI)

Workloads: digits, MLP 64-128-10, 100 clients (Dirichlet 0.5), 10 per round, FedAvg, 1 local epoch of SGD,
final accuracy averaged over 3 seeds (one seed is too noisy for "1 point": the digits test set has 360 images);
HAPT activity recognition, MLP 768-256-12 (~200k parameters), users 1-24 as clients, 6 per round.
Every byte is ``len(payload)`` of the real serialized update. Goals printed: per workload, the largest upload
compression with final accuracy within 1 point of uncompressed FedAvg (>= 32x), and seed exchange's compression
for MeZO clients (>= 1000x, on the tiny GPT: Shakespeare roles as clients).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import Bench, goal, goal_table, parser, pyplot, save_figure
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.progress import progress_bars

console = Console()
CODECS = ["float32", "fp16", "bf16", "q8", "q4", "q2", "topk0.1", "topk0.1+q8", "topk0.01+q8", "sign",
          "topk0.01+q8 (no EF)", "rot+q2", "rot+rand0.5+q2", "rot+rand0.3+q2", "rot+rand0.2+q2", "rot+rand0.1+q2"]
SEEDS = {"digits": 3, "hapt": 3}


@dataclass
class Run:
    workload: str
    codec: str
    bytes_up: int
    bytes_down: int
    accuracy: float
    seconds: float
    ratio: float = 1.0  # uncompressed upload bytes / these


def codec_config(workload: str, codec: str, rounds: int, seed: int) -> dict[str, Any]:
    spec, feedback = codec.replace(" (no EF)", ""), "no EF" not in codec
    raw: dict[str, Any] = {"rounds": rounds, "seed": seed, "sampling_seed": seed + 1, "eval": {"every": rounds},
                           "codec": {"up": spec, "error_feedback": feedback}}
    if workload == "digits":
        return raw | {"clients_per_round": 10, "client": {"lr": 0.1},
                      "data": {"name": "digits", "partition": "dirichlet", "num_clients": 100}}
    return raw | {"clients_per_round": 6, "model": {"name": "hapt-mlp"}, "client": {"lr": 0.05},
                  "data": {"name": "hapt", "partition": "natural"}}


def mezo_config(up: str, rounds: int) -> dict[str, Any]:
    return {"rounds": rounds, "clients_per_round": 4, "model": {"name": "tiny-gpt"},
            "data": {"name": "shakespeare", "partition": "natural", "num_clients": 20},
            "client": {"method": "mezo", "lr": 1e-3, "batch_size": 64, "options": {"eps": 1e-3}},
            "codec": {"up": up}, "eval": {"every": rounds, "batch_size": 512}}


def run(workload: str, codec: str, raws: list[dict[str, Any]]) -> Run:
    """One codec on one workload, over the seeds in ``raws``: bytes of the first, accuracy averaged."""
    start, results = time.perf_counter(), []
    for raw in raws:
        server, _ = build_server(parse_config(raw), None)
        records = server.run(raw["rounds"])
        results.append((sum(r.bytes_up for r in records), sum(r.bytes_down for r in records),
                        records[-1].eval["accuracy"]))
    up, down, _ = results[0]
    return Run(workload, codec, up, down, sum(r[2] for r in results) / len(results), time.perf_counter() - start)


def goals(runs: list[Run]) -> list[dict[str, Any]]:
    found = []
    for workload in SEEDS:
        mine = [r for r in runs if r.workload == workload]
        base = next(r for r in mine if r.codec == "float32")
        best = max((r for r in mine if r.accuracy >= base.accuracy - 0.01), key=lambda r: r.ratio)
        found.append(goal(f"{workload}: upload compression within 1 point of float32 FedAvg", best.ratio, ">= 32",
                          best.ratio >= 32, codec=best.codec))
    seeds = next(r for r in runs if r.workload == "mezo" and r.codec == "seeds")
    found.append(goal("MeZO seed exchange upload compression (same model)", seeds.ratio, ">= 1000",
                      seeds.ratio >= 1000, codec="seeds"))
    return found


def table(runs: list[Run], found: list[dict[str, Any]], rounds: dict[str, int]) -> str:
    lines = [f"Digits MLP, 100 clients, 10 per round, {rounds['digits']} rounds, accuracy averaged over "
             f"{SEEDS['digits']} seeds; HAPT MLP, 24 users, 6 per round, {rounds['hapt']} rounds, {SEEDS['hapt']} "
             "seeds; MeZO: tiny GPT on "
             f"20 Shakespeare roles, {rounds['mezo']} rounds. `rot` = random rotation, `rand0.3` = a seeded random "
             "30% of the entries (no positions sent), `(no EF)` = without error feedback. "
             "Measured by `python benchmarks/communication.py`.", "",
             "| workload | uplink codec | MiB up | upload ratio | MiB down | final accuracy |",
             "|---|---|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.workload} | {r.codec} | {r.bytes_up / 2**20:.3f} | {r.ratio:.1f}x | "
                     f"{r.bytes_down / 2**20:.2f} | {r.accuracy:.4f} |")
    named = [g | {"goal": f"{g['goal']} ({g['codec']})"} for g in found]
    return "\n".join(lines) + "\n\n" + goal_table(named, "{:.1f}x")


def plot(runs: list[Run], path: Path) -> None:
    fig, axes = pyplot().subplots(1, len(SEEDS), figsize=(12, 4.5))
    for ax, workload in zip(axes, SEEDS, strict=True):
        for r in (r for r in runs if r.workload == workload):
            ax.scatter(r.bytes_up / 2**20, r.accuracy)
            ax.annotate(r.codec, (r.bytes_up / 2**20, r.accuracy), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set(xscale="log", xlabel="MiB uploaded by all clients (log)", ylabel="final test accuracy",
               title=f"accuracy vs upload, per codec ({workload}, FedAvg)")
    save_figure(fig, path)


def main() -> None:
    args = parser(__doc__, "fewer rounds (CI)").parse_args()
    rounds = {"digits": 10, "hapt": 5, "mezo": 1} if args.quick else {"digits": 40, "hapt": 30, "mezo": 3}
    seeds = {w: 1 if args.quick else n for w, n in SEEDS.items()}
    jobs = [(w, c, [codec_config(w, c, rounds[w], s) for s in range(seeds[w])]) for w in SEEDS for c in CODECS]
    jobs += [("mezo", up, [mezo_config(up, rounds["mezo"])]) for up in ("float32", "seeds")]
    runs = []
    with progress_bars(console=console) as progress:
        task = progress.add_task("codecs", total=len(jobs))
        for workload, codec, raw in jobs:
            progress.update(task, description=f"{workload}: {codec}")
            runs.append(run(workload, codec, raw))
            progress.advance(task)
    for workload in rounds:
        base = next(r for r in runs if r.workload == workload and r.codec == "float32")
        for r in runs:
            if r.workload == workload:
                r.ratio = base.bytes_up / r.bytes_up
    found = goals(runs)
    text = table(runs, found, rounds)
    Bench("communication", args.quick).publish({"runs": [asdict(r) for r in runs], "goals": found}, text,
                                               plot=lambda path: plot(runs, path),
                                               figure="accuracy against upload, per codec")
    console.print(text)


if __name__ == "__main__":
    main()
