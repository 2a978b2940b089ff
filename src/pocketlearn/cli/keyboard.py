"""``pocketlearn keyboard``: next-word prediction fine-tuned by private federated learning on Shakespeare users."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console


def keyboard_command(
    users: Annotated[int, typer.Option(min=2, help="Shakespeare roles as users (at most 456).")] = 100,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 12,
    clients_per_round: Annotated[int, typer.Option(min=1, help="Clients sampled per round.")] = 30,
    update: Annotated[str | None, typer.Option(help="bias | partial (embedding rows seen) | full | lora; default: "
                                               "bias with DP, partial without.")] = None,
    epsilon: Annotated[float, typer.Option(min=0, help="DP-FedAvg with noise calibrated to spend this ε over "
                                           "the run (δ = 1e-3).")] = 8.0,
    dp: Annotated[bool, typer.Option(help="--no-dp: plain FedAvg, no privacy.")] = True,
    runs: Annotated[Path, typer.Option(help="Folder of run folders.")] = Path("runs"),
    name: Annotated[str, typer.Option(help="Run name: results go to RUNS/NAME.")] = "keyboard",
    fresh: Annotated[bool, typer.Option(help="Start over instead of resuming RUNS/NAME.")] = False,
) -> None:
    """Pretrain a word-level model on public text (cached), then fine-tune it across users' phones."""
    from pocketlearn.apps.keyboard.run import UPDATES, KeyboardConfig
    from pocketlearn.errors import ConfigError

    update = update or ("bias" if dp else "partial")
    if update not in UPDATES:
        raise ConfigError(f"--update {update!r}: choose one of {', '.join(UPDATES)}")
    config = KeyboardConfig(name=name, users=users, rounds=rounds, clients_per_round=clients_per_round,
                            update=update, epsilon=epsilon if dp else None)  # type: ignore[arg-type]
    run_and_report(config, runs / name, Console(), fresh=fresh)


def run_and_report(config: Any, run_dir: Path, console: Console, *, fresh: bool = False) -> Any:
    """Run the keyboard job with progress bars, then print and save its summary and plots."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from pocketlearn.apps.keyboard.report import device_summary, plot_keyboard, summary_table
    from pocketlearn.apps.keyboard.run import run_keyboard
    from pocketlearn.federated.report import plot_run
    from pocketlearn.progress import progress_bars

    columns = (TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with progress_bars(*columns, console=console) as progress:
        pre = progress.add_task("pretraining on public text (cached after)", total=None, status="")
        fed = progress.add_task("federated fine-tuning, round", total=config.rounds, status="", visible=False)

        def on_pretrain(step: int, total: int, loss: float) -> None:
            progress.update(pre, completed=step, total=total, status=f"loss {loss:.2f}")

        def on_round(r: Any) -> None:
            progress.update(pre, visible=False)
            status = f"top-1 {r.eval['accuracy']:.1%}" if "accuracy" in r.eval else ""
            if r.epsilon is not None:
                status += f"  ε {r.epsilon:.2f}"
            progress.update(fed, visible=True, completed=r.round, status=f"{status}  {r.finished}/{r.sampled} done")

        result = run_keyboard(config, run_dir, fresh=fresh, on_pretrain_step=on_pretrain, on_round=on_round)
    console.print(device_summary(result))
    console.print(summary_table(result, f"{config.users} users, {config.rounds} rounds, {config.update} updates"))
    plots = [plot_keyboard(result, run_dir / "keyboard.png"), *plot_run(run_dir)]
    console.print(f"results: {run_dir}/summary.json, metrics.jsonl; plots: {', '.join(p.name for p in plots)}")
    return result
