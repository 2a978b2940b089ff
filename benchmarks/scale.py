"""Cross-device scale: round time and peak memory against the population size, for a cohort of fixed size.

    python benchmarks/scale.py           # results/scale.{json,md,png}, the scale section of docs/federated.md
    python benchmarks/scale.py --quick   # populations up to 100k, fewer rounds, no 100-round run (CI)

`make bench-scale` builds the anchors' venv first (`make anchors-venv`): pfl-research runs the same workload at
every population beside pocketlearn (benchmarks/anchor_workloads/scale_pfl.py, on pocketlearn's own clients);
a quick run includes pfl only when that venv exists.

Workload: `examples/synthetic.toml`, LEAF's Synthetic(0.5, 0.5) with a logistic regression 60-10, clients of
30 samples on average (lognormal, sigma 1), FedAvg, one local epoch of SGD (batch 10), every client available
(so a cohort is exactly the size asked for). Each point is one fresh `pocketlearn fed simulate` process: its
peak RSS is measured from outside (getrusage of the child), its round time is the median of its rounds.
Goals printed: with a cohort of 1,000, peak RSS and round time at N = 1M within 1.5x and 1.2x of N = 1k; a
1M-client run of 100 rounds (cohort 1,000) within 15 minutes on 2 cores. Beside them, pocketlearn's round time
and peak RSS against pfl's at the largest population pfl ran.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import ROOT, Bench, goal, goal_summary, goal_table, parser, pyplot, save_figure

console = Console()
CONFIG = ROOT / "examples" / "synthetic.toml"
PFL_SCRIPT = ROOT / "benchmarks" / "anchor_workloads" / "scale_pfl.py"
ANCHORS_PYTHON = ROOT / ".anchors-venv" / "bin" / "python"
COHORT = 1_000
POPULATIONS = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
COHORTS = [10, 100, 1_000, 10_000]
LONG_ROUNDS, LONG_LIMIT_S = 100, 15 * 60
RSS_GOAL, TIME_GOAL = 1.5, 1.2

# Runs the command and prints its peak RSS: getrusage(RUSAGE_CHILDREN) of a process whose only child it is.
_MEASURE = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def simulate(population: int, cohort: int, rounds: int, scratch: Path) -> dict[str, Any]:
    """One fresh ``fed simulate`` of the workload; its summary with wall time and peak RSS added."""
    out = scratch / f"n{population}-k{cohort}-r{rounds}.json"
    cli = Path(sys.executable).parent / "pocketlearn"
    sets = {"data.num_clients": population, "clients_per_round": cohort, "rounds": rounds,
            "eval.every": rounds, "devices.availability": "false", "name": f"scale-{population}-{cohort}"}
    command = [str(cli), "fed", "simulate", str(CONFIG), "--out", str(out), "--quiet", "--fresh",
               *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]]
    outside = _measured(command, scratch)
    summary = json.loads(out.read_text())
    return {"framework": "pocketlearn", "population": population, "cohort": cohort, "rounds": rounds,
            "wall_s": outside["wall_s"], "peak_rss_mb": outside["peak_rss_mb"],
            "round_s": statistics.median(summary["round_times"]), "accuracy": summary["accuracy"]}


def simulate_pfl(population: int, cohort: int, rounds: int, scratch: Path) -> dict[str, Any]:
    """The same workload in one fresh pfl-research process (the anchors' venv, pocketlearn's clients)."""
    out = scratch / f"pfl-n{population}-k{cohort}-r{rounds}.json"
    command = [str(ANCHORS_PYTHON), str(PFL_SCRIPT), "--population", str(population), "--cohort", str(cohort),
               "--rounds", str(rounds), "--out", str(out)]
    outside = _measured(command, scratch, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    result = json.loads(out.read_text())
    return {"framework": "pfl", "population": population, "cohort": cohort, "rounds": rounds,
            "wall_s": outside["wall_s"], "peak_rss_mb": outside["peak_rss_mb"],
            "round_s": statistics.median(result["round_times"]), "accuracy": result["accuracy"]}


def _measured(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``command`` under _MEASURE: its exit code, wall time and peak RSS."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=cwd, capture_output=True, text=True,
                          env=env)
    outside = json.loads(done.stdout.strip().splitlines()[-1])
    if outside["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return outside


def measure(quick: bool) -> dict[str, list[dict[str, Any]]]:
    populations = [n for n in POPULATIONS if n <= (100_000 if quick else 10_000_000)]
    rounds = 3 if quick else 10
    with_pfl = ANCHORS_PYTHON.exists()
    if not with_pfl:
        if not quick:
            raise SystemExit(f"{ANCHORS_PYTHON} is missing: run `make anchors-venv` (or `make bench-scale`)")
        console.print("no anchors' venv (`make anchors-venv`): pfl-research is left out of this quick run")
    runs: dict[str, list[dict[str, Any]]] = {"populations": [], "pfl": [], "cohorts": [], "long": []}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for n in populations:
            runs["populations"].append(_show(simulate(n, COHORT, rounds, scratch)))
            if with_pfl:
                runs["pfl"].append(_show(simulate_pfl(n, COHORT, rounds, scratch)))
        if not quick:
            for k in COHORTS:
                runs["cohorts"].append(_show(simulate(1_000_000, k, 5, scratch)))
            runs["long"].append(_show(simulate(1_000_000, COHORT, LONG_ROUNDS, scratch)))
    return runs


def _show(run: dict[str, Any]) -> dict[str, Any]:
    console.print(f"{run['framework']:<11} N {run['population']:>10,}  cohort {run['cohort']:>6,}  "
                  f"rounds {run['rounds']:>3}: round "
                  f"{run['round_s']:.3f} s, peak RSS {run['peak_rss_mb']:.0f} MB, wall {run['wall_s']:.1f} s, "
                  f"accuracy {run['accuracy']:.3f}")
    return run


def goals(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    by_n = {r["population"]: r for r in runs["populations"]}
    smallest, largest = by_n[min(by_n)], by_n[max(n for n in by_n if n <= 1_000_000)]
    name = f"N = {largest['population']:,} vs {smallest['population']:,} (cohort {COHORT:,})"
    out = [goal(f"peak RSS, {name}", largest["peak_rss_mb"] / smallest["peak_rss_mb"], f"≤ {RSS_GOAL}",
                largest["peak_rss_mb"] <= RSS_GOAL * smallest["peak_rss_mb"]),
           goal(f"round time, {name}", largest["round_s"] / smallest["round_s"], f"≤ {TIME_GOAL}",
                largest["round_s"] <= TIME_GOAL * smallest["round_s"])]
    for run in runs["long"]:
        out.append(goal(f"{run['rounds']} rounds of {run['cohort']:,} clients out of {run['population']:,}, "
                        "whole command (s)", run["wall_s"], f"≤ {LONG_LIMIT_S}", run["wall_s"] <= LONG_LIMIT_S))
    return out


def versus_pfl(runs: dict[str, list[dict[str, Any]]]) -> str:
    """pocketlearn's round time and peak RSS as a fraction of pfl's, at the largest population both ran."""
    if not runs["pfl"]:
        return ""
    pfl = max(runs["pfl"], key=lambda r: r["population"])
    ours = next(r for r in runs["populations"] if r["population"] == pfl["population"])
    return (f"Against pfl-research at N = {pfl['population']:,} (cohort {COHORT:,}): pocketlearn's round takes "
            f"{ours['round_s'] / pfl['round_s']:.2f}x pfl's time ({pfl['round_s'] / ours['round_s']:.1f}x faster), "
            f"its peak RSS is {ours['peak_rss_mb'] / pfl['peak_rss_mb']:.2f}x pfl's.\n")


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| framework | population | cohort | rounds | round s (median) | peak RSS MB | whole command s | "
             "test accuracy |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['framework']} | {r['population']:,} | {r['cohort']:,} | {r['rounds']} | {r['round_s']:.3f} | "
              f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} | {r['accuracy']:.3f} |" for r in runs]
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    panels = 2 if runs["cohorts"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    pops = runs["populations"]
    ax.plot([r["population"] for r in pops], [r["round_s"] for r in pops], "o-", label="pocketlearn round time")
    if runs["pfl"]:
        ax.plot([r["population"] for r in runs["pfl"]], [r["round_s"] for r in runs["pfl"]], "o:",
                color="tab:gray", label="pfl-research round time")
        ax.legend(loc="center left", fontsize="small")
    ax.set_xscale("log")
    ax.set_xlabel(f"clients in the population (cohort {COHORT:,})")
    ax.set_ylabel("median round time (s)")
    twin = ax.twinx()
    twin.plot([r["population"] for r in pops], [r["peak_rss_mb"] for r in pops], "s--", color="tab:red")
    twin.set_ylabel("pocketlearn peak RSS (MB)", color="tab:red")
    twin.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    if runs["cohorts"]:
        ax = axes[0][1]
        cohorts = runs["cohorts"]
        ax.plot([r["cohort"] for r in cohorts], [r["round_s"] for r in cohorts], "o-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients per round (population 1,000,000)")
        ax.set_ylabel("median round time (s)")
    save_figure(fig, path)


def main() -> None:
    args = parser(__doc__, "populations up to 100k, 3 rounds, no cohort sweep or 100-round run (CI)").parse_args()
    started = time.perf_counter()
    runs = measure(args.quick)
    checked = goals(runs)
    text = (f"Measured by `python benchmarks/scale.py` in {time.perf_counter() - started:.0f} s: one fresh "
            "process per row, peak RSS from outside.\n\n" + table(runs["populations"] + runs["pfl"] + runs["cohorts"]
                                                                 + runs["long"]) + "\n" + versus_pfl(runs) + "\n"
            + goal_table(checked))
    Bench("scale", args.quick).publish({"runs": runs, "goals": checked}, text,
                                       plot=lambda p: plot(runs, p), figure="round time and peak RSS against "
                                       "the population size")
    console.print(text)
    console.print(goal_summary(checked))


if __name__ == "__main__":
    main()
