"""SmolLM2-135M fine-tuned on Shakespeare users: on one device (LoRA, MeZO) and federated (FedIT, MeZO seeds).

    python benchmarks/llm.py            # full run (~12 min on 2 cores): results/llm.{json,md,png}, docs/llm.md
    python benchmarks/llm.py --quick    # a few steps of each, for CI: results/llm-quick.*

One device: held-out perplexity of one user's last 20% lines before and after fine-tuning, the step's peak
memory measured in a fresh process (pocketlearn.memory.measure, through the planner) next to a forward pass
measured the same way, and the seconds taken. Federated: held-out perplexity of the users' pooled last lines
after each round, and the bytes each client uploads (serialized payloads). Ratios come from this one run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import Bench, goal, goal_summary, goal_table, parser, pyplot, save_figure
from pocketlearn.apps.llm import (
    FederatedLLMConfig,
    FinetuneConfig,
    find_user,
    finetune,
    run_federated,
    tokenize_user,
)
from pocketlearn.apps.llm.federated import federated_users
from pocketlearn.devices import format_bytes
from pocketlearn.models.pretrained import load_smollm2
from pocketlearn.progress import working

USER = "Hamlet/HAMLET"  # the role with the most lines
MODEL = "smollm2-135m"
console = Console()


@dataclass(frozen=True)
class Settings:
    lora_steps: int
    mezo_steps: int
    rounds: int
    mezo_rounds: int
    users: int = 6
    clients_per_round: int = 3
    windows_per_user: int = 8
    mezo_windows_per_user: int = 16
    seq_len: int = 64
    batch_size: int = 4
    mezo_batch_size: int = 2  # MeZO's noise is in the direction, not the batch: more, cheaper steps
    test_windows: int = 16


FULL = Settings(lora_steps=30, mezo_steps=250, rounds=5, mezo_rounds=5)
QUICK = Settings(lora_steps=3, mezo_steps=10, rounds=1, mezo_rounds=1, users=3, clients_per_round=3,
                 windows_per_user=4, mezo_windows_per_user=4, test_windows=4)


def one_device(s: Settings, tokenizer: Any) -> list[dict[str, Any]]:
    data = tokenize_user(find_user(USER), tokenizer, seq_len=s.seq_len, max_test_windows=s.test_windows)
    rows = []
    for method, steps, batch in (("lora", s.lora_steps, s.batch_size), ("mezo", s.mezo_steps, s.mezo_batch_size)):
        model = load_smollm2(with_tokenizer=False)[0]
        with working(console, f"one device: {method}, {steps} steps (memory measured in fresh processes)"):
            _, report = finetune(model, data, FinetuneConfig(method, steps, batch), factory=MODEL)
        rows.append(report.to_dict())
        console.print(f"{method}: perplexity {report.perplexity_before:.2f} → {report.perplexity_after:.2f}, "
                      f"peak {format_bytes(report.memory.peak_bytes)} ({report.memory.ratio:.2f}× inference), "
                      f"{report.seconds:.0f} s", highlight=False)
        del model
    return rows


def federated(s: Settings, tokenizer: Any) -> list[dict[str, Any]]:
    template = load_smollm2(with_tokenizer=False)[0]
    runs = []
    base = {"users": s.users, "clients_per_round": s.clients_per_round, "seq_len": s.seq_len,
            "batch_size": s.batch_size, "test_windows_per_user": max(1, s.test_windows // s.users)}
    configs = [
        FederatedLLMConfig("fedit", rounds=s.rounds, windows_per_user=s.windows_per_user, **base),
        FederatedLLMConfig("mezo", rounds=s.mezo_rounds, windows_per_user=s.mezo_windows_per_user,
                           **(base | {"batch_size": s.mezo_batch_size})),
        FederatedLLMConfig("portion", rounds=s.rounds, windows_per_user=s.windows_per_user,
                           devices={"laptop-16g": 0.5, "phone-4g": 0.5}, top_layers={"phone-4g": 6}, **base),
    ]
    for config in configs:
        data = federated_users(tokenizer, config)
        with working(console, f"federated {config.mode}: {config.rounds} rounds"):
            _, report = run_federated(template, data, config, on_round=lambda p, m=config.mode: console.print(
                f"  {m} round {p.round}: perplexity {p.perplexity:.2f}, {p.bytes_up_per_client / 1e3:,.1f} KB up "
                f"per client, {p.seconds:.0f} s", highlight=False))
        runs.append(report.to_dict())
    return runs


def goals(device_rows: list[dict[str, Any]], fed_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    add = out.append
    by = {r["method"]: r for r in device_rows}
    add(goal("one device: mezo peak / inference peak", by["mezo"]["peak_vs_inference"], "<= 1.3",
             by["mezo"]["peak_vs_inference"] <= 1.3))
    for m in ("lora", "mezo"):
        r = by[m]["perplexity_after"] / by[m]["perplexity_before"]
        add(goal(f"one device: {m} held-out perplexity after / before", r, "< 1", r < 1))
    up = {run["mode"]: sum(p["bytes_up_per_client"] for p in run["rounds"][1:]) / max(len(run["rounds"]) - 1, 1)
          for run in fed_runs}
    add(goal("federated: mezo seeds upload per client-round (KB)", up["mezo"] / 1e3, "<= 10", up["mezo"] <= 10e3))
    add(goal("federated: fedit LoRA upload per client-round (MB)", up["fedit"] / 1e6, "(reference)", True))
    add(goal("federated: fedit upload / mezo upload", up["fedit"] / up["mezo"], ">= 100",
             up["fedit"] / up["mezo"] >= 100))
    add(goal("federated: portion upload / fedit upload", up["portion"] / up["fedit"], "< 1",
             up["portion"] < up["fedit"]))
    for run in fed_runs:
        first, last = run["rounds"][0]["perplexity"], run["rounds"][-1]["perplexity"]
        add(goal(f"federated {run['mode']}: held-out perplexity last round / round 0", last / first, "< 1",
                 last < first))
    return out


def markdown(device_rows: list[dict[str, Any]], fed_runs: list[dict[str, Any]], goal_rows: list[dict[str, Any]],
             header: str) -> str:
    lines = [header, "", f"**One device** (user {USER!r}, its last 20% lines held out)", "",
             "| method | steps × batch | trainable | held-out ppl before → after | train peak | × inference "
             "| seconds |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in device_rows:
        lines.append(f"| {r['method']} | {r['steps']} × {r['batch_size']} | {r['trainable_params']:,} | "
                     f"{r['perplexity_before']:.2f} → "
                     f"{r['perplexity_after']:.2f} | {format_bytes(r['peak_bytes'])} | {r['peak_vs_inference']:.2f}× "
                     f"| {r['seconds']:.0f} |")
    lines += ["", "**Federated** (largest roles, one client each; held-out: their last lines, pooled)", "",
              "| mode | round | held-out ppl | up per client | clients | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for run in fed_runs:
        for p in run["rounds"]:
            size = "" if p["round"] == 0 else _size(p["bytes_up_per_client"])
            lines.append(f"| {run['mode']} | {p['round']} | {p['perplexity']:.2f} | {size} | {p['clients']} | "
                         f"{p['seconds']:.0f} |")
    return "\n".join(lines) + "\n\n" + goal_table(goal_rows)


def _size(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def plot(fed_runs: list[dict[str, Any]], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for run in fed_runs:
        rounds = run["rounds"]
        up = sum(p["bytes_up_per_client"] for p in rounds[1:]) / max(len(rounds) - 1, 1)
        ax.plot([p["round"] for p in rounds], [p["perplexity"] for p in rounds], marker="o",
                label=f"{run['mode']} ({_size(up)} up per client-round)")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out perplexity")
    ax.set_title("SmolLM2-135M, federated over Shakespeare users")
    ax.legend()
    save_figure(fig, path, dpi=120)


def main() -> None:
    cli = parser(__doc__, "a few steps and one round of each (CI)")
    cli.add_argument("--threads", type=int, default=1,
                        help="intra-op threads, here and in the measuring processes (default 1: on shared cores a "
                             "spinning 2-thread team was 20x slower per step, one thread at most ~1.6x)")
    args = cli.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by the fresh processes that measure memory
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    start = time.time()
    torch.manual_seed(0)
    tokenizer = load_smollm2()[1]
    device_rows = one_device(settings, tokenizer)
    fed_runs = federated(settings, tokenizer)
    goal_rows = goals(device_rows, fed_runs)
    header = (f"Measured by `python benchmarks/llm.py{' --quick' if args.quick else ''}` in "
              f"{time.time() - start:.0f} s on {torch.get_num_threads()} threads: SmolLM2-135M, windows of "
              f"{settings.seq_len} tokens.")
    table = markdown(device_rows, fed_runs, goal_rows, header)
    Bench("llm", args.quick).publish({"one_device": device_rows, "federated": fed_runs, "goals": goal_rows}, table,
                                     plot=lambda path: plot(fed_runs, path),
                                     figure="held-out perplexity per federated round")
    print(table)
    console.print(goal_summary(goal_rows), style="bold")


if __name__ == "__main__":
    main()
