"""The keyboard job's results for a person: a summary table and a plot of accuracy against rounds and bytes."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from pocketlearn.apps.keyboard.run import KeyboardResult
from pocketlearn.devices import format_bytes


def summary_table(result: KeyboardResult, title: str) -> Table:
    table = Table(title=title)
    for col in ("held-out lines of the users", "pretrained only", "after federated fine-tuning"):
        table.add_column(col, justify="right")
    for key, label, fmt in (("accuracy", "next-word top-1", "{:.1%}"), ("top3", "next-word top-3", "{:.1%}"),
                            ("perplexity", "perplexity", "{:.1f}")):
        table.add_row(label, fmt.format(result.before.get(key, float("nan"))), fmt.format(result.after[key]))
    table.add_row("privacy", "-", f"ε = {result.epsilon:.2f}" if result.epsilon is not None else "no DP")
    table.add_row("upload per client per round", "-", format_bytes(result.bytes_up_per_client))
    return table


def device_summary(result: KeyboardResult) -> Table:
    table = Table(title="simulated devices")
    for col in ("device", "clients", "budget", "trains with", "est. peak memory"):
        table.add_column(col)
    for d in result.devices:
        table.add_row(d["device"], str(d["clients"]), format_bytes(d["budget_bytes"]), d["method"] or d["note"],
                      format_bytes(d["peak_bytes"]) if d["peak_bytes"] else "-")
    return table


def plot_keyboard(result: KeyboardResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    evaluated = [r for r in result.rounds if r.get("test_accuracy") is not None]
    uploaded = dict(zip([r["round"] for r in result.rounds],
                        np.cumsum([r["bytes_up"] for r in result.rounds]) / 2**20, strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, xs, xlabel in ((axes[0], [0] + [r["round"] for r in evaluated], "round"),
                           (axes[1], [0] + [uploaded[r["round"]] for r in evaluated], "MiB uploaded (all clients)")):
        for key, label in (("accuracy", "top-1"), ("top3", "top-3")):
            ax.plot(xs, [result.before.get(key, np.nan)] + [r[f"test_{key}"] for r in evaluated], marker=".",
                    label=label)
        ax.set(xlabel=xlabel, ylabel="next-word accuracy (held-out lines)")
        ax.legend()
    eps = f", ε = {result.epsilon:.2f}" if result.epsilon is not None else ""
    fig.suptitle(f"keyboard: federated fine-tuning from the pretrained model (round 0){eps}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
