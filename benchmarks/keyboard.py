"""Keyboard next-word prediction: what federated fine-tuning gains over the pretrained model, with and without DP.

    python benchmarks/keyboard.py           # writes results/keyboard.{json,md,png} and docs/keyboard.md
    python benchmarks/keyboard.py --quick   # 20 users, 2 rounds, a sliver of pretraining (CI)

The model (word-level GPT, 10,000-word vocabulary, 3.0M parameters) is pretrained on the fortune database,
then fine-tuned across Shakespeare roles as users; metrics are on the users' held-out last lines. Runs: each
update mode without DP (partial embedding rows, full model, LoRA), and DP-FedAvg at epsilon <= 8 (noise
calibrated by dp-accounting for the run's sampling rate and rounds). Goals printed: a top-1 gain over
pretrained-only with and without DP, and the upload saved by partial embedding updates vs the full model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import Bench, goal, goal_table, parser, pyplot, save_figure
from pocketlearn.apps.keyboard.pretrain import PretrainConfig
from pocketlearn.apps.keyboard.run import KeyboardConfig, run_keyboard
from pocketlearn.progress import progress_bars

console = Console()


@dataclass
class Row:
    run: str
    update: str
    epsilon: float | None
    top1: float
    top3: float
    perplexity: float
    upload_per_client: float
    peak_bytes: int
    seconds: float


def configs(quick: bool) -> dict[str, KeyboardConfig]:
    base = KeyboardConfig(name="bench", epsilon=None)
    if quick:
        base = replace(base, users=20, rounds=2, clients_per_round=6, pretraining=PretrainConfig(limit=256))
    return {"partial": replace(base, update="partial"), "full": replace(base, update="full"),
            "lora": replace(base, update="lora"), "dp": replace(base, update=DP_UPDATE, epsilon=8.0)}


DP_UPDATE = "bias"


def measure(label: str, config: KeyboardConfig, run_dir: Path) -> tuple[Row, dict[str, float]]:
    start = time.perf_counter()
    result = run_keyboard(config, run_dir, fresh=True)
    peak = max((d["peak_bytes"] or 0) for d in result.devices)
    a = result.after
    row = Row(label, config.update, result.epsilon, a["accuracy"], a["top3"], a["perplexity"],
              result.bytes_up_per_client, peak, time.perf_counter() - start)
    return row, result.before


def table(rows: list[Row], before: dict[str, float], cfg: KeyboardConfig, found: list[dict[str, Any]]) -> str:
    lines = [f"{cfg.users} Shakespeare users, {cfg.clients_per_round} per round, {cfg.rounds} rounds, 1 local epoch; "
             "held-out last lines of each user. Measured by `python benchmarks/keyboard.py`.", "",
             "| run | update | ε | top-1 | top-3 | perplexity | upload / client / round | device peak (est.) |",
             "|---|---|---:|---:|---:|---:|---:|---:|",
             f"| pretrained only | - | - | {before['accuracy']:.2%} | {before['top3']:.2%} | "
             f"{before['perplexity']:.1f} | - | - |"]
    for r in rows:
        eps = f"{r.epsilon:.2f}" if r.epsilon is not None else "∞"
        lines.append(f"| federated {r.run} | {r.update} | {eps} | {r.top1:.2%} | {r.top3:.2%} | {r.perplexity:.1f} | "
                     f"{r.upload_per_client / 2**10:,.0f} KiB | {r.peak_bytes / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n\n" + goal_table(found, "{}")


def goals(rows: list[Row], before: dict[str, float]) -> list[dict[str, Any]]:
    by = {r.run: r for r in rows}
    gain, dp_gain = by["partial"].top1 - before["accuracy"], by["dp"].top1 - before["accuracy"]
    saved = by["full"].upload_per_client / by["partial"].upload_per_client
    return [
        goal("top-1 gain of federated fine-tuning (partial rows, no DP)", f"{gain * 100:+.2f} pts", "> 0", gain > 0),
        goal(f"top-1 gain with DP-FedAvg (ε = {by['dp'].epsilon:.2f})", f"{dp_gain * 100:+.2f} pts", "> 0 at ε ≤ 8",
             dp_gain > 0 and (by["dp"].epsilon or 99) <= 8),
        goal("upload saved by partial embedding updates vs full model", f"{saved:.1f}x", "> 1", saved > 1),
    ]


def plot(rows: list[Row], before: dict[str, float], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r.upload_per_client / 2**10, r.top1 * 100, s=40)
        ax.annotate(f"{r.run} ({r.update})", (r.upload_per_client / 2**10, r.top1 * 100), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    ax.axhline(before["accuracy"] * 100, ls="--", c="gray", label="pretrained only")
    ax.set(xscale="log", xlabel="upload per client per round (KiB, log)", ylabel="next-word top-1 accuracy (%)",
           title="keyboard: federated fine-tuning on Shakespeare users")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    args = parser(__doc__, "20 users, 2 rounds, a sliver of pretraining (CI)").parse_args()
    runs, rows, before = configs(args.quick), [], {}
    work = Path("runs") / "bench-keyboard"
    with progress_bars(console=console) as progress:
        task = progress.add_task("keyboard", total=len(runs))
        for label, cfg in runs.items():
            progress.update(task, description=f"keyboard: {label}")
            row, before = measure(label, cfg, work / label)
            rows.append(row)
            progress.advance(task)
    found = goals(rows, before)
    text = table(rows, before, runs["partial"], found)
    Bench("keyboard", args.quick).publish({"before": before, "runs": [r.__dict__ for r in rows], "goals": found},
                                          text, plot=lambda path: plot(rows, before, path),
                                          figure="top-1 accuracy against upload per client")
    console.print(text)


if __name__ == "__main__":
    main()
