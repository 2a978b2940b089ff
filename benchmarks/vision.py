"""Federated vision on Fashion-MNIST: a compact convolutional transformer (CCT) against a small CNN, and TinyTL.

    python benchmarks/vision.py           # writes results/vision.{json,md,png} and docs/vision.md
    python benchmarks/vision.py --quick   # a slice of the data, few rounds (CI)

Federated: 50 clients, Dirichlet label skew alpha in {0.1, 0.5, 1.0}, 10 clients per round, FedAvg, local SGD
(momentum 0.9), the same rounds for both models; final test accuracy and parameter counts side by side.
Transfer: the CNN pretrained on classes 0-4 learns classes 5-9 on a device with TinyTL (frozen weights, lite
residual branches, biases and head), bias-only and full backprop; accuracy after the same steps and the
estimated peak memory of a step. Fashion-MNIST comes from Debian's dataset-fashion-mnist. The full run takes
about 35 minutes on 2 cores (the CCT's federated runs dominate).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import Bench, parser, pyplot, save_figure
from pocketlearn.data import load_tensors
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.memory.estimate import estimate
from pocketlearn.methods import make_method
from pocketlearn.models import build_model
from pocketlearn.progress import progress_bars

console = Console()
ALPHAS = (0.1, 0.5, 1.0)
MODELS = ("cnn", "cct")


@dataclass
class FedRow:
    model: str
    params: int
    alpha: float
    accuracy: float
    seconds: float


@dataclass
class TransferRow:
    method: str
    trainable: int
    accuracy_before: float
    accuracy_after: float
    peak_bytes: int


def federated(model: str, alpha: float, rounds: int, limit: int | None) -> FedRow:
    raw = {"rounds": rounds, "clients_per_round": 10, "checkpoint": False, "model": {"name": model},
           "data": {"name": "fashion-mnist", "partition": "dirichlet", "num_clients": 50, "alpha": alpha,
                    "limit": limit},
           "client": {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "epochs": 2}, "eval": {"every": rounds}}
    start = time.perf_counter()
    server, _ = build_server(parse_config(raw), None)
    records = server.run(rounds)
    params = sum(p.numel() for p in build_model(model).parameters())
    return FedRow(model, params, alpha, records[-1].eval["accuracy"], time.perf_counter() - start)


def transfer(steps: int, limit: int | None) -> list[TransferRow]:
    """Pretrain on classes 0-4 ("the cloud"), then each method learns classes 5-9 on the device."""
    x, y, xt, yt = load_tensors("fashion-mnist", limit=limit)
    old, new, new_t = y < 5, y >= 5, yt >= 5
    torch.manual_seed(0)
    base = make_method("backprop", build_model("cnn"), lr=0.05, momentum=0.9)
    for batch in batches_of(x[old], y[old], 64, seed=0):
        base.step(batch)
    test = batches_of(xt[new_t], yt[new_t], 500)
    before = evaluate(base.model, test)["accuracy"]
    train = batches_of(x[new], y[new], 32, seed=1)[:steps]
    rows = []
    for name, options in (("tinytl", {"lr": 0.05}), ("bias", {"lr": 0.05}), ("backprop", {"lr": 0.05})):
        torch.manual_seed(0)
        method = make_method(name, copy.deepcopy(base.model), momentum=0.9, **options)
        peak = estimate(method, (train[0][0].clone(), train[0][1].clone())).total  # own storage, not the data set's
        for batch in train:
            method.step(batch)
        rows.append(TransferRow(name, method.num_trainable(), before, evaluate(method.model, test)["accuracy"], peak))
    return rows


def table(fed: list[FedRow], moved: list[TransferRow], rounds: int) -> str:
    lines = [f"Fashion-MNIST, 50 clients (Dirichlet alpha), 10 per round, {rounds} rounds of FedAvg, 2 local epochs. "
             "Measured by `python benchmarks/vision.py`.", "",
             "| model | parameters | " + " | ".join(f"accuracy α={a:g}" for a in ALPHAS) + " |",
             "|---|---:|" + "---:|" * len(ALPHAS)]
    for model in MODELS:
        rows = {r.alpha: r for r in fed if r.model == model}
        lines.append(f"| {model} | {rows[ALPHAS[0]].params:,} | "
                     + " | ".join(f"{rows[a].accuracy:.4f}" for a in ALPHAS) + " |")
    lines += ["", "Transfer of the CNN pretrained on classes 0-4 to classes 5-9 (same steps for every method):", "",
              "| method | trainable | accuracy before → after | peak memory of a step (est.) |", "|---|---:|---|---:|"]
    lines += [f"| {r.method} | {r.trainable:,} | {r.accuracy_before:.4f} → {r.accuracy_after:.4f} | "
              f"{r.peak_bytes / 2**20:.1f} MiB |" for r in moved]
    return "\n".join(lines) + "\n"


def plot(fed: list[FedRow], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for model in MODELS:
        rows = sorted((r for r in fed if r.model == model), key=lambda r: r.alpha)
        ax.plot([r.alpha for r in rows], [r.accuracy for r in rows], marker="o", label=f"{model} ({rows[0].params:,})")
    ax.set(xscale="log", xlabel="Dirichlet α (smaller: more label skew)", ylabel="test accuracy",
           title="federated Fashion-MNIST, 50 clients")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    args = parser(__doc__, "a data slice, few rounds (CI)").parse_args()
    rounds, limit, steps = (2, 3000, 20) if args.quick else (15, 30000, 200)
    fed: list[FedRow] = []
    with progress_bars(console=console) as progress:
        task = progress.add_task("vision", total=len(MODELS) * len(ALPHAS) + 1)
        for model in MODELS:
            for alpha in ALPHAS:
                progress.update(task, description=f"federated {model}, α={alpha:g}")
                fed.append(federated(model, alpha, rounds, limit))
                progress.advance(task)
        progress.update(task, description="transfer")
        moved = transfer(steps, limit)
        progress.advance(task)
    out: dict[str, Any] = {"federated": [asdict(r) for r in fed], "transfer": [asdict(r) for r in moved]}
    text = table(fed, moved, rounds)
    Bench("vision", args.quick).publish(out, text, plot=lambda path: plot(fed, path),
                                        figure="accuracy against label skew, CNN and CCT")
    console.print(text)


if __name__ == "__main__":
    main()
