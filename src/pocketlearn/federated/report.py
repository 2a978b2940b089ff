"""What a run tells a person: a device table at the start, a summary at the end, plots from metrics.jsonl."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from pocketlearn.devices import format_bytes

if TYPE_CHECKING:
    from pocketlearn.federated.strategies.base import Strategy


def device_table(clients: Any, num_clients: int) -> Table:
    """Per device class: how many clients, its budget, the method it trains with (or why it cannot)."""
    table = Table(title=f"{num_clients} clients")
    for col in ("device", "clients", "budget", "method", "est. peak", "note"):
        table.add_column(col)
    counts = np.bincount(clients.device_index, minlength=len(clients.fits))
    for fit, n in zip(clients.fits, counts, strict=True):
        table.add_row(fit.device.name, str(n), format_bytes(fit.device.memory_budget_bytes), fit.method or "-",
                      format_bytes(fit.estimated_bytes) if fit.estimated_bytes else "-", fit.note)
    return table


def summarize(cfg: Any, server: Any, records: list[Any], *, setup_s: float, resumed: bool) -> dict[str, Any]:
    """Totals of this invocation's rounds, in the anchors' terms (updates/s = client updates / round time)."""
    from pocketlearn.federated.asynchronous import BufferedServer

    times = [r.round_time_s for r in records]
    updates = sum(r.finished for r in records)
    last_eval: dict[str, float] = next((r.eval for r in reversed(records) if r.eval), {})
    unfit = int(np.array([f.method is None for f in server.clients.fits])[server.clients.device_index].sum())
    return {
        "framework": "pocketlearn", "name": cfg.name, "rounds": server.round, "rounds_run": len(records),
        "clients_per_round": cfg.clients_per_round, "num_clients": len(server.clients.sizes),
        "resumed": resumed, "setup_s": setup_s, "train_s": float(sum(times)),
        "updates": updates, "updates_per_s": updates / sum(times) if times and sum(times) > 0 else 0.0,
        "accuracy": last_eval.get("accuracy"), "test_loss": last_eval.get("loss"), "precision": cfg.client.precision,
        "dropped": sum(r.dropped for r in records), "stragglers": sum(r.stragglers for r in records),
        "unfit_clients": unfit, "bytes_up": sum(r.bytes_up for r in records),
        "bytes_down": sum(r.bytes_down for r in records), "round_times": times, "simulated_s": server.clock_s,
        **({"step_cost": server.clients.step_cost} if server.clients.step_cost else {}),
        **({"asynchronous": asdict(server.settings)} if isinstance(server, BufferedServer) else {}),
        **({"methods": methods} if len(methods := method_summary(server.clients, records)) > 1 else {}),
        **({"privacy": privacy} if (privacy := privacy_summary(server.strategy)) else {}),
        **({"training_path": path} if (path := training_path(server, cfg.vectorize)) else {}),
        **({"client_steps": steps} if (steps := client_steps(server)) else {}),
    }


def client_steps(server: Any) -> dict[str, Any] | None:
    """The client-steps the in-process engine computed against the clients' real ones (padding makes it > 1)."""
    from pocketlearn.federated.simulate import InProcessEngine

    if not isinstance(server.engine, InProcessEngine) or not server.engine.client_steps[1]:
        return None
    computed, real = server.engine.client_steps
    return {"computed": computed, "real": real, "computed_per_real": round(computed / real, 3),
            "samples": server.engine.samples_trained}


def training_path(server: Any, vectorize: bool) -> str | None:
    """How the in-process engine trains each method's clients, and why (None: they train in another engine)."""
    from pocketlearn.federated.simulate import InProcessEngine

    if not isinstance(server.engine, InProcessEngine):
        return None
    methods = sorted({fit.method for fit in server.clients.fits if fit.method is not None})
    paths = {m: _path(server.engine, server.methods.local(m, 1), vectorize) for m in methods}
    if len(set(paths.values())) == 1:
        return paths[methods[0]]
    return "; ".join(f"{m}: {p}" for m, p in paths.items()) or None


def _path(engine: Any, local: Any, vectorize: bool) -> str:
    if not vectorize:
        return "one client at a time (vectorize = false)"
    if engine.forward is None:
        return "one client at a time (the model has layers that cannot be stacked over clients: batch norm, dropout)"
    if not local.vectorizable:
        options = " with these options" if local.facts.vectorizes else ""
        return f"one client at a time (method {local.method!r} has no batched step{options})"
    how = engine.execution.describe()
    return f"vectorized ({'MLP with its backward written out, ' if engine.written_out(local) else ''}{how})"


def privacy_summary(strategy: Strategy) -> dict[str, Any] | None:
    """ε spent and where the noise came from, for a differentially private strategy (None otherwise).

    Never the noise generator's state: that stays in the server checkpoint.
    """
    mechanism = strategy.mechanism
    if mechanism is None:
        return None
    c = mechanism.config
    return {"epsilon": mechanism.epsilon_so_far(), "delta": c.delta, "mode": c.mode, "accountant": c.accountant,
            "noise_multiplier": c.noise_multiplier, "sampling": f"{mechanism.sample_size} of {mechanism.num_clients} "
            "clients per round, fixed size, without replacement", "noise": mechanism.noise_source}


def method_summary(clients: Any, records: list[Any]) -> dict[str, dict[str, Any]]:
    """Per training method: client updates, uplink bytes, and the estimated peak against the devices' budgets."""
    out: dict[str, dict[str, Any]] = {}
    for fit in clients.fits:
        if fit.method is None:
            continue
        row = out.setdefault(fit.method, {"updates": 0, "bytes_up": 0, "devices": [], "max_peak_over_budget": 0.0})
        row["devices"].append(fit.device.name)
        row["max_peak_over_budget"] = max(row["max_peak_over_budget"],
                                          (fit.estimated_bytes or 0) / fit.device.memory_budget_bytes)
    for r in records:
        for method, n in r.by_method.items():
            if method in out:
                out[method]["updates"] += n
                out[method]["bytes_up"] += r.bytes_by_method.get(method, 0)
    for row in out.values():
        row["bytes_per_update"] = row["bytes_up"] / row["updates"] if row["updates"] else None
    return out


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Accuracy vs round and vs bytes, and client participation per round, as PNGs next to the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketlearn.federated.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    out_dir = out_dir or run_dir
    rounds = np.array([r["round"] for r in records])
    evaluated = [r for r in records if r.get("test_accuracy") is not None]
    traffic = np.cumsum([r["bytes_up"] + r["bytes_down"] for r in records])
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot([r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated], marker=".")
    axes[0].set(xlabel="round", ylabel="test accuracy", title="accuracy vs round")
    by_round = dict(zip(rounds.tolist(), traffic.tolist(), strict=True))
    axes[1].plot([by_round[r["round"]] / 2**20 for r in evaluated], [r["test_accuracy"] for r in evaluated],
                 marker=".")
    axes[1].set(xlabel="MiB sent and received (all clients)", ylabel="test accuracy", title="accuracy vs bytes")
    paths.append(_save(fig, out_dir / "accuracy.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    finished = np.array([r["finished"] for r in records])
    dropped = np.array([r["dropped"] for r in records])
    late = np.array([r["stragglers"] for r in records])
    ax.bar(rounds, finished, label="finished")
    ax.bar(rounds, late, bottom=finished, label="past deadline")
    ax.bar(rounds, dropped, bottom=finished + late, label="dropped out")
    ax.set(xlabel="round", ylabel="clients sampled", title="client participation")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    paths.append(_save(fig, out_dir / "participation.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
