"""Mixed-method rounds on the keyboard workload: every device trains the way its memory allows.

    python benchmarks/mixed.py           # writes results/mixed.{json,md,png} and docs/mixed.md
    python benchmarks/mixed.py --quick   # 20 users, 2 rounds, a sliver of pretraining (CI)

The pretrained word-level GPT of benchmarks/keyboard.py is fine-tuned across Shakespeare users on a fleet of
20% flagship, 50% mid-range and 30% low-end devices. A device class is defined by what fits it: the budgets
are set from the planner's own estimates at batch 16, so that full backprop fits only the flagship, LoRA is
the best the mid-range device fits and only MeZO fits the low-end one. Three runs, same users and rounds:
(a) everyone trains with the method the weakest device can run (MeZO), (b) only devices that fit LoRA take
part, with LoRA, (c) mixed: each device class gets the planner's pick (`client.method = "auto"`) and one
round combines them all (federated/mixed.py). Goal: (c) beats (a) and (b) on held-out next-word accuracy
while every device stays within its budget. Uplink bytes per method come from the serialized payloads.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import Bench, goal, goal_table, parser, pyplot, save_figure
from pocketlearn.apps.keyboard.pretrain import MODEL, PretrainConfig, pretrain
from pocketlearn.federated.config import RunConfig, parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.report import method_summary
from pocketlearn.progress import progress_bars, working

console = Console()
SHARES = {"flagship": 0.2, "mid-range": 0.5, "low-end": 0.3}
METHOD_OPTIONS = {"backprop": {"embedding_rows": "seen"}, "lora": {"rank": 8}, "mezo": {"lr": 2e-4, "eps": 1e-3}}
SCENARIOS = {
    "(a) all MeZO (weakest device's method)": {"method": "mezo", "methods": {d: "mezo" for d in SHARES}},
    "(b) LoRA devices only": {"method": "lora", "methods": {d: "lora" for d in SHARES}, "fit": "report"},
    "(c) mixed (planner per device)": {"method": "auto", "methods": {}},
}


def device_budgets(init: Path, batch: int = 16) -> dict[str, int]:
    """Budgets that separate the classes by the planner's estimates (what fits is what defines a class)."""
    from pocketlearn.checkpoint import load_weights
    from pocketlearn.memory.estimate import estimate
    from pocketlearn.methods import make_method
    from pocketlearn.models import build_model

    model = build_model(MODEL)
    load_weights(model, init)
    x = torch.zeros(batch, 24, dtype=torch.long)
    need = {m: estimate(make_method(m, copy.deepcopy(model), **{k: v for k, v in o.items() if k != "eps"}),
                        (x, x)).total for m, o in {**METHOD_OPTIONS, "bias": {}, "sparse": {}}.items()}
    above_lora = min(v for m, v in need.items() if m not in ("lora", "mezo"))
    return {"flagship": int(need["backprop"] * 1.25), "mid-range": (need["lora"] + above_lora) // 2,
            "low-end": (need["mezo"] + need["lora"]) // 2}


def run_config(name: str, scenario: dict[str, Any], init: Path, profiles: Path, quick: bool) -> RunConfig:
    users, rounds, per_round = (20, 2, 6) if quick else (60, 8, 20)
    return parse_config({
        "name": name, "rounds": rounds, "clients_per_round": per_round, "checkpoint": False,
        "model": {"name": MODEL, "init": str(init)},
        "data": {"name": "shakespeare-words", "partition": "natural", "num_clients": users},
        "client": {"method": scenario["method"], "methods": scenario["methods"], "fit": scenario.get("fit", "plan"),
                   "lr": 0.5, "batch_size": 16, "per_method": {m: dict(o) for m, o in METHOD_OPTIONS.items()}},
        "codec": {"up": "rows"},
        "devices": {"mix": SHARES, "profiles": str(profiles), "availability": False},
        "eval": {"every": 1 if quick else 2, "batch_size": 256}})


def run(label: str, cfg: RunConfig) -> dict[str, Any]:
    start = time.perf_counter()
    server, _ = build_server(cfg, None)
    before = server.evaluate(server.model)
    records = server.run(cfg.rounds)
    fits = [{"device": f.device.name, "budget": f.device.memory_budget_bytes, "method": f.method,
             "estimated_peak": f.estimated_bytes} for f in server.clients.fits]
    return {"run": label, "before": before, "after": records[-1].eval,
            "curve": [{"round": r.round, **r.eval} for r in records if r.eval],
            "methods": method_summary(server.clients, records), "devices": fits,
            "updates": sum(r.finished for r in records), "bytes_up": sum(r.bytes_up for r in records),
            "seconds": time.perf_counter() - start}


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    a, b, c = (r["after"]["accuracy"] for r in rows)
    within = all(d["method"] is None or d["estimated_peak"] <= d["budget"] for r in rows for d in r["devices"])
    return [goal("(c) mixed beats (a) all-MeZO, top-1", f"{(c - a) * 100:+.2f} pts", "> 0", c > a),
            goal("(c) mixed beats (b) LoRA devices only, top-1", f"{(c - b) * 100:+.2f} pts", "> 0", c > b),
            goal("every device within its budget (planner's estimate)", "yes" if within else "no", "yes", within)]


def table(rows: list[dict[str, Any]], budgets: dict[str, int], found: list[dict[str, Any]], cfg: RunConfig) -> str:
    mib = 2**20
    fleet = ", ".join(f"{share:.0%} {d} ({budgets[d] / mib:.1f} MiB)" for d, share in SHARES.items())
    lines = [f"{cfg.data.num_clients} Shakespeare users, {cfg.clients_per_round} per round, {cfg.rounds} rounds; "
             f"fleet: {fleet}. Measured by `python benchmarks/mixed.py`.", "",
             "| run | top-1 | top-3 | perplexity | who trains how (updates) | upload per update |",
             "|---|---:|---:|---:|---|---|",
             f"| pretrained only | {rows[0]['before']['accuracy']:.2%} | {rows[0]['before']['top3']:.2%} | "
             f"{rows[0]['before']['perplexity']:.1f} | - | - |"]
    for r in rows:
        who = ", ".join(f"{m} ({s['updates']})" for m, s in r["methods"].items() if s["updates"])
        per = ", ".join(f"{m} {s['bytes_per_update'] / 2**10:,.1f} KiB" for m, s in r["methods"].items()
                        if s["updates"])
        a = r["after"]
        lines.append(f"| {r['run']} | {a['accuracy']:.2%} | {a['top3']:.2%} | {a['perplexity']:.1f} | {who} | {per} |")
    return "\n".join(lines) + "\n\n" + goal_table(found, "{}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        rounds = [0] + [p["round"] for p in r["curve"]]
        axes[0].plot(rounds, [r["before"]["accuracy"] * 100] + [p["accuracy"] * 100 for p in r["curve"]],
                     marker=".", label=r["run"])
        axes[1].plot(rounds, [r["before"]["perplexity"]] + [p["perplexity"] for p in r["curve"]], marker=".",
                     label=r["run"])
    axes[0].set(xlabel="round", ylabel="held-out next-word top-1 (%)", title="accuracy vs round")
    axes[1].set(xlabel="round", ylabel="held-out perplexity", title="perplexity vs round")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    args = parser(__doc__, "20 users, 2 rounds, a sliver of pretraining (CI)").parse_args()
    bench = Bench("mixed", args.quick)
    with working(console, "pretraining (cached)"):
        init = pretrain(PretrainConfig(limit=256) if args.quick else PretrainConfig())
    budgets = device_budgets(init)
    profiles = bench.path(".devices.toml")
    profiles.write_text("".join(f'[devices.{d}]\nmemory_budget_bytes = {b}\ndescription = "{d} (budget from the '
                                f'planner\'s estimates)"\n' for d, b in budgets.items()))
    rows = []
    with progress_bars(console=console) as progress:
        task = progress.add_task("mixed", total=len(SCENARIOS))
        for label, scenario in SCENARIOS.items():
            progress.update(task, description=f"mixed: {label}")
            cfg = run_config(f"bench-mixed-{len(rows)}", scenario, init, profiles, args.quick)
            rows.append(run(label, cfg))
            progress.advance(task)
    found = goals(rows)
    text = table(rows, budgets, found, cfg)
    bench.publish({"budgets": budgets, "runs": rows, "goals": found}, text, plot=lambda path: plot(rows, path),
                  figure="held-out accuracy and perplexity per round")
    console.print(text)


if __name__ == "__main__":
    main()
