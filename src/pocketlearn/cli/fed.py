"""``pocketlearn fed simulate``: a federated run of simulated devices, from one TOML config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

fed_app = typer.Typer(help="Federated learning: simulate many devices on this machine (or a Ray cluster).",
                      no_args_is_help=True)


@fed_app.command("simulate")
def simulate_command(
    config: Annotated[Path, typer.Argument(help="Run config (TOML).", exists=False)],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set rounds=5.")] = None,
    runs: Annotated[Path, typer.Option(help="Folder of run folders.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Discard a previous run of this name instead of resuming it.")] = False,
    engine: Annotated[str | None, typer.Option(help="inprocess | ray (overrides the config).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster HOST:PORT (default: a local Ray).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write a summary JSON here.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar or tables.")] = False,
) -> None:
    """Run (or resume) the federated simulation described by CONFIG; metrics go to RUNS/<name>/metrics.jsonl."""
    t_command = time.perf_counter()
    from pocketlearn.federated.config import load_config

    overrides = list(set_ or [])
    if engine:
        overrides.append(f"engine='{engine}'")
    cfg = load_config(config, overrides)
    if address:
        import os

        os.environ["RAY_ADDRESS"] = address
    console = Console(quiet=quiet)
    summary = run_simulation(cfg, runs / cfg.name, fresh=fresh, console=console)
    summary["command_s"] = time.perf_counter() - t_command
    if out:
        out.write_text(json.dumps(summary, indent=1))


def run_simulation(cfg: Any, run_dir: Path, *, fresh: bool, console: Console) -> dict[str, Any]:
    from pocketlearn.data.partition import Partition, partition_stats, save_stats, stats_table
    from pocketlearn.federated.experiment import build_server
    from pocketlearn.federated.report import device_table, summarize

    t0 = time.perf_counter()
    server, data = build_server(cfg, run_dir, fresh=fresh)
    resumed = server.resume()
    setup_s = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    stats = partition_stats(Partition(data.indices), data.y.numpy() if data.y.dim() == 1 else None)
    save_stats(stats, run_dir / "partition.json")
    console.print(stats_table(stats, f"partition: {cfg.data.partition} of {cfg.data.name}"))
    console.print(device_table(server.clients, len(data.indices)))
    if resumed:
        console.print(f"resuming {run_dir} after round {server.round}")
    records = _run_rounds(server, cfg.rounds, console)
    summary = summarize(cfg, server, records, setup_s=setup_s, resumed=resumed)
    if cfg.eval.personalize_clients:
        summary["personalization"] = _personalize(cfg, server, data, run_dir, console)
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "round_times"}))
    return summary


def _personalize(cfg: Any, server: Any, data: Any, run_dir: Path, console: Console) -> dict[str, float]:
    from pocketlearn.federated.personalize import personalize

    with console.status(f"personalizing {cfg.eval.personalize_clients} clients"):
        result = personalize(server.model, server.params, server.engine.template, data.x, data.y, data.indices,
                             server.local, num_clients=cfg.eval.personalize_clients,
                             epochs=cfg.eval.personalize_epochs, seed=cfg.seed)
    (run_dir / "personalization.json").write_text(json.dumps(result, indent=1))
    return result["mean"]


def _run_rounds(server: Any, rounds: int, console: Console) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("rounds", total=rounds, completed=server.round, status="")

        def on_round(r: Any) -> None:
            acc = r.eval.get("accuracy")
            status = f"acc {acc:.4f}" if acc is not None else ""
            progress.update(task, completed=r.round, status=f"{status} finished {r.finished}/{r.sampled}")

        return server.run(rounds, on_round)
