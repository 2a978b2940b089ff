"""Activity recognition personalised per user: accuracy before/after per method, measured memory vs budgets,
and FedAvg across all 30 users.

    python benchmarks/har.py            # full run (~75 s on 2 cores), rewrites results/har.* and docs/har.md
    python benchmarks/har.py --quick    # small slices, for CI; writes results/har-quick.*

A base model is pretrained on users 1-20; each of users 21-30 personalises it on the first half of each of their
activity bouts (recording order, both phone placements) and is scored on the second half. Each (model, method)
training step is measured once in a fresh process (batch 16, one thread) and compared with the device budgets;
a method that does not fit the device it is run for is reported with the bytes it needs. hapt-mlp's fp32
weights alone (0.8 MB) exceed a 512 KiB MCU, so the MCU candidate is har-tiny (768-24-12).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import Bench, goal_summary, goal_table, parser, pyplot, save_figure
from pocketlearn.apps.har.federated import FederatedHarConfig, FederatedHarResult, run_federated
from pocketlearn.apps.har.personalize import HarResult, PersonalizeConfig, run_personalization
from pocketlearn.apps.har.report import federated_rows, markdown_table, not_run, summary_header, summary_rows
from pocketlearn.progress import working

DEVICES = ("mcu-512k", "pi-zero-512m", "phone-1g")
console = Console()


def goals(result: HarResult, fed: FederatedHarResult) -> list[dict[str, Any]]:
    """Claims checked against this run's numbers."""
    rows = [s for s in result.summary() if s["after"] is not None]
    raised = [f"{s['model']}/{s['method']}" for s in rows if s["after"] > s["before"]]
    mcu = [f["model"] + "/" + f["method"] for f in result.fits if f["device"] == "mcu-512k" and f["fits"]]
    no_mcu = [f"{f['model']}/{f['method']} ({f['needed_bytes']} B)" for f in result.fits
              if f["device"] == "mcu-512k" and not f["fits"]]
    gradient = [s for s in rows if s["method"] in ("backprop", "bias", "sparse", "lora", "mezo")]
    scored = [r["test_accuracy"] for r in fed.rounds if "test_accuracy" in r]
    return [
        {"goal": "personalisation raises mean per-user accuracy for most (model, method) pairs",
         "met": len(raised) > len(rows) / 2, "detail": f"{len(raised)}/{len(rows)}: {', '.join(raised)}"},
        {"goal": "personalisation raises mean per-user accuracy for most gradient/zeroth-order methods",
         "met": sum(s["after"] > s["before"] for s in gradient) > len(gradient) / 2,
         "detail": f"{sum(s['after'] > s['before'] for s in gradient)}/{len(gradient)}"},
        {"goal": "some method trains within mcu-512k (measured step peak)", "met": bool(mcu),
         "detail": f"fit: {', '.join(mcu) or 'none'}; do not fit: {', '.join(no_mcu) or 'none'}"},
        {"goal": "FedAvg over all 30 users improves on its first evaluated round",
         "met": len(scored) > 1 and scored[-1] > scored[0],
         "detail": " -> ".join(f"{a:.3f}" for a in (scored[:1] + scored[-1:]))},
    ]


def plot(result: HarResult, fed: FederatedHarResult, path: Path) -> None:
    models = result.config["models"]
    fig, axes = pyplot().subplots(1, len(models) + 1, figsize=(5 * (len(models) + 1), 4.2))
    for ax, model in zip(axes, models, strict=False):
        rows = [s for s in result.summary() if s["model"] == model]
        names = [s["method"] for s in rows]
        ax.bar(range(len(rows)), [s["after"] or 0 for s in rows], color="tab:green", label="after")
        ax.axhline(rows[0]["before"], color="k", ls="--", label="before (base model)")
        ax.set_xticks(range(len(rows)), names, rotation=30)
        low = min([s["after"] for s in rows if s["after"]] + [rows[0]["before"]])
        ax.set(ylim=(max(0.0, low - 0.05), 1.0), ylabel="mean per-user accuracy", title=f"{model}: personalised")
        ax.legend(fontsize=7)
    scored = [(r["round"], r["test_accuracy"]) for r in fed.rounds if "test_accuracy" in r]
    axes[-1].plot([r for r, _ in scored], [a for _, a in scored], marker=".")
    axes[-1].set(xlabel="round", ylabel="accuracy on users' later windows", title="FedAvg, 30 users as clients")
    save_figure(fig, path)


def report(result: HarResult, fed: FederatedHarResult, found: list[dict[str, Any]]) -> str:
    text = "Personalised on the first half of each of a user's activity bouts, scored on the second half " \
           "(mean over users " \
           f"{result.config['users'][0]}-{result.config['users'][-1]}; base pretrained on users " \
           f"{result.config['pretrain_users'][0]}-{result.config['pretrain_users'][-1]}).\n\n"
    text += markdown_table(summary_header(result), summary_rows(result))
    if not_run(result):
        text += "\nNot run: " + "; ".join(not_run(result)) + "\n"
    final = fed.to_json()
    text += (f"\nFedAvg ({fed.rounds[-1]['round']} rounds, hapt-mlp, every user a client): final accuracy "
             f"{final['final_accuracy']:.3f} on all users' later windows (mean per user "
             f"{final['mean_user_accuracy']:.3f}, min {min(fed.per_user.values()):.3f}).\n\n")
    fed_rows = federated_rows(fed)
    shown = fed_rows[:: max(1, len(fed_rows) // 6)]
    text += markdown_table(["round", "accuracy", "bytes up"], shown + [r for r in fed_rows[-1:] if r not in shown])
    return text + "\n" + goal_table(found, columns=("detail",))


def main() -> None:
    args = parser(__doc__, "two users, one small model, few rounds (CI)").parse_args()
    torch.set_num_threads(1)  # shared cores: timings and memory of one thread
    start = time.perf_counter()
    if args.quick:
        config = PersonalizeConfig(users=(25, 26), methods=("backprop", "bias", "mezo"), models=("har-tiny",),
                                   epochs=3, mezo_epochs=5, pretrain_epochs=2)
        fed_config = FederatedHarConfig(rounds=4, clients_per_round=6, eval_every=2)
    else:
        config = PersonalizeConfig()
        fed_config = FederatedHarConfig(rounds=60, clients_per_round=10, local_epochs=2, eval_every=3)
    with working(console, "personalising") as status:
        result = run_personalization(config, devices=DEVICES, on_progress=lambda msg: status.update(msg))
        status.update("federated")
        fed = run_federated(fed_config)
    found = goals(result, fed)
    text = report(result, fed, found)
    Bench("har", args.quick).publish({"personalization": result.to_json(), "federated": fed.to_json(), "goals": found,
                                      "seconds": time.perf_counter() - start}, text,
                                     plot=lambda path: plot(result, fed, path),
                                     figure="personalised accuracy per method, and FedAvg across users")
    console.print(text)
    console.print(goal_summary(found), style="bold")
    console.print(f"{time.perf_counter() - start:.0f} s; mean before "
                  f"{statistics.mean(u.before for u in result.users):.3f}")


if __name__ == "__main__":
    main()
