"""``pocketlearn fed simulate``: a federated run of simulated devices, from one TOML config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

TENSORBOARD_HELP = ("Also write each round's metrics as TensorBoard event files in this folder (view: tensorboard "
                    "--logdir DIR); overrides the config's [tracking] tensorboard.")

fed_app = typer.Typer(help="Federated learning: simulate many devices on this machine (or a Ray cluster), or "
                      "run on real devices over the network (serve, join, partition).",
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
    tensorboard: Annotated[Path | None, typer.Option(help=TENSORBOARD_HELP)] = None,
) -> None:
    """Run (or resume) the federated simulation described by CONFIG; metrics go to RUNS/<name>/metrics.jsonl."""
    t_command = time.perf_counter()
    from pocketlearn.federated.config import load_config

    overrides = list(set_ or [])
    if engine:
        overrides.append(f"engine='{engine}'")
    cfg = with_tensorboard(load_config(config, overrides), tensorboard)
    if address:
        import os

        os.environ["RAY_ADDRESS"] = address
    console = Console(quiet=quiet)
    summary = run_simulation(cfg, runs / cfg.name, fresh=fresh, console=console)
    summary["command_s"] = time.perf_counter() - t_command
    if out:
        out.write_text(json.dumps(summary, indent=1))


def run_simulation(cfg: Any, run_dir: Path, *, fresh: bool, console: Console) -> dict[str, Any]:
    from pocketlearn.data.partition import save_stats, stats_table
    from pocketlearn.federated.clients import client_stats
    from pocketlearn.federated.experiment import build_server
    from pocketlearn.federated.report import device_table, summarize, training_path
    from pocketlearn.federated.run_folder import check_run_folder
    from pocketlearn.tracking import ScalarLog

    t0 = time.perf_counter()
    track = ScalarLog(cfg.tracking.tensorboard) if cfg.tracking.tensorboard else None  # no package: fail first
    if not fresh:
        check_run_folder(cfg, run_dir)  # one run per folder: other settings are refused before anything is written
    server, data = build_server(cfg, run_dir, fresh=fresh)
    resumed = server.resume()
    setup_s = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    stats = client_stats(data.clients)
    save_stats(stats, run_dir / "partition.json")
    console.print(stats_table(stats, f"partition: {cfg.data.partition} of {cfg.data.name}"))
    console.print(device_table(server.clients, len(data.clients)))
    if path := training_path(server, cfg.vectorize):
        console.print(f"training path: {path}", highlight=False, soft_wrap=True)
    if resumed:
        console.print(f"resuming {run_dir} after round {server.round}")
    elif server.discarded_rounds:
        why = "checkpoint = false" if not cfg.checkpoint else "no checkpoint"
        console.print(f"{run_dir} had metrics of {server.discarded_rounds} round(s) but {why}: starting over (its "
                      "metrics.jsonl is replaced)")
    records = _run_rounds(server, cfg.rounds, console, track)
    summary = summarize(cfg, server, records, setup_s=setup_s, resumed=resumed)
    if cfg.eval.personalize_clients:
        summary["personalization"] = _personalize(cfg, server, data, run_dir, console)
    console.print_json(json.dumps({k: v for k, v in summary.items() if k != "round_times"}))
    _warn_if_not_private(summary, console)
    return summary


def _warn_if_not_private(summary: dict[str, Any], console: Console) -> None:
    from pocketlearn.federated.privacy.config import NOT_PRIVATE

    if summary.get("privacy", {}).get("noise") == NOT_PRIVATE:
        console.print(f"[bold red]warning: DP {NOT_PRIVATE}[/] (dp.reproducible_noise = true; ε assumes secret "
                      "noise, which this run's is not)")


def _personalize(cfg: Any, server: Any, data: Any, run_dir: Path, console: Console) -> dict[str, float]:
    from pocketlearn.federated.personalize import personalize
    from pocketlearn.progress import working

    with working(console, f"personalizing {cfg.eval.personalize_clients} clients"):
        result = personalize(server.model, server.params, server.engine.template, data.clients,
                             server.local, num_clients=cfg.eval.personalize_clients,
                             epochs=cfg.eval.personalize_epochs, seed=cfg.seed)
    (run_dir / "personalization.json").write_text(json.dumps(result, indent=1))
    return result["mean"]


def with_tensorboard(cfg: Any, folder: Path | None) -> Any:
    """``cfg`` with ``--tensorboard`` (if given) as its tracking folder, made absolute (serve's app runs elsewhere)."""
    folder = folder or (Path(cfg.tracking.tensorboard) if cfg.tracking.tensorboard else None)
    if folder is None:
        return cfg
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tensorboard": str(folder.resolve())})})


def _run_rounds(server: Any, rounds: int, console: Console, track: Any = None) -> list[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from pocketlearn.progress import progress_bars
    from pocketlearn.tracking import round_values

    columns = (TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with progress_bars(*columns, console=console, transient=False) as progress:
        task = progress.add_task("rounds", total=rounds, completed=server.round, status="")

        def on_round(r: Any) -> None:
            acc = r.eval.get("accuracy")
            status = f"acc {acc:.4f}" if acc is not None else ""
            progress.update(task, completed=r.round, status=f"{status} finished {r.finished}/{r.sampled}")
            if track:
                track.write(r.round, round_values(r))

        try:
            return server.run(rounds, on_round)
        finally:
            if track:
                track.close()


@fed_app.command("serve")
def serve_command(
    config: Annotated[Path, typer.Argument(help="Run config (TOML), as for `fed simulate`.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set rounds=5.")] = None,
    runs: Annotated[Path, typer.Option(help="Folder of run folders.")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="Discard a previous run of this name instead of resuming it.")] = False,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port devices (and the flwr CLI) connect to.")] = 9092,
    insecure: Annotated[bool, typer.Option(help="Plain HTTP and no node authentication (trusted networks, "
                                           "tests).")] = False,
    ssl_certfile: Annotated[Path | None, typer.Option(help="Server certificate (PEM); default: self-signed, in "
                                                      "RUNS/<name>/tls.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The certificate's private key (PEM).")] = None,
    ssl_ca_certfile: Annotated[Path | None, typer.Option(help="The CA that signed it; devices need this file.")
                               ] = None,
    tls_name: Annotated[list[str] | None, typer.Option(help="Extra host name or IP the self-signed certificate "
                                                       "covers (repeat).")] = None,
    authorized_keys: Annotated[list[Path] | None, typer.Option(help="Device public key, or folder of *.pub "
                                                               "(repeat); only these devices may join.")] = None,
    node_auth: Annotated[bool, typer.Option(help="Require registered device keys.")] = True,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for devices; later ones are left "
                                                 "out.")] = 600.0,
    min_devices: Annotated[int, typer.Option(help="Devices to wait for before round 1 (0: one per client).")] = 0,
    join_timeout: Annotated[float, typer.Option(help="Seconds to wait for those devices.")] = 600.0,
    out: Annotated[Path | None, typer.Option(help="Also write the summary JSON here.")] = None,
    verbose: Annotated[bool, typer.Option(help="Also show Flower's own log lines.")] = False,
    tensorboard: Annotated[Path | None, typer.Option(help=TENSORBOARD_HELP)] = None,
) -> None:
    """Serve CONFIG to real devices through Flower: start a SuperLink, submit the run, follow it to the end.

    Metrics and checkpoint go to RUNS/<name>/ as in `fed simulate`; after a crash, run it again to resume.
    """
    from pocketlearn.errors import ConfigError
    from pocketlearn.extras import require
    from pocketlearn.federated.config import load_config
    from pocketlearn.federated.flower.serve import ServeOptions, serve
    from pocketlearn.federated.flower.tls import TlsFiles

    require("flwr")  # before any other check: without the deploy extra nothing else matters
    cfg = with_tensorboard(load_config(config, list(set_ or [])), tensorboard)
    if cfg.tracking.tensorboard:
        from pocketlearn.tracking import require_tensorboard

        require_tensorboard()  # here, not in the ServerApp's log after the SuperLink started
    certificates = None
    if ssl_certfile and ssl_keyfile and ssl_ca_certfile:
        certificates = TlsFiles(ssl_ca_certfile, ssl_certfile, ssl_keyfile)
    elif ssl_certfile or ssl_keyfile or ssl_ca_certfile:
        raise ConfigError("pass all of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, or none (a self-signed "
                          "CA is then made in the run folder)")
    options = ServeOptions(host, port, insecure, certificates, tuple(tls_name or ()), node_auth,
                           tuple(authorized_keys or ()), round_timeout, min_devices, join_timeout, verbose)
    console = Console(highlight=False, soft_wrap=True)  # long paths stay on one line, as users copy them
    summary = serve(cfg, runs / cfg.name, options, fresh=fresh, say=console.print)
    console.print_json(json.dumps({k: v for k, v in summary.items() if k not in ("round_times", "traffic")}))
    if out:
        out.write_text(json.dumps(summary, indent=1))


@fed_app.command("join")
def join_command(
    server: Annotated[str, typer.Option(help="The server's HOST:PORT.")],
    data: Annotated[Path, typer.Option(help="This device's examples: a client's file that `pocketlearn fed partition "
                                       "CONFIG --out DIR` wrote (or pocketlearn.data.files.save_examples).")],
    device: Annotated[str, typer.Option(help="Device preset (`pocketlearn devices`), or a name in --profiles.")],
    profiles: Annotated[Path | None, typer.Option(help="TOML file of device profiles.")] = None,
    root_certificates: Annotated[Path | None, typer.Option(help="The server's CA certificate (ca.pem).")] = None,
    key: Annotated[Path | None, typer.Option(help="This device's private key; made (with KEY.pub) if missing. "
                                             "Default: ~/.pocketlearn/device.key.")] = None,
    insecure: Annotated[bool, typer.Option(help="Plain HTTP, for a server started with --insecure.")] = False,
    home: Annotated[Path | None, typer.Option(help="Flower's working folder (default: a temporary one).")] = None,
    local_port: Annotated[int, typer.Option(help="Port of the SuperNode's local API on 127.0.0.1 (0: any free "
                                            "one).")] = 0,
    max_wait: Annotated[float | None, typer.Option(help="Give up after this many seconds without reaching the "
                                                   "server (one line on stderr, exit code 2); default: keep "
                                                   "trying.")] = None,
) -> None:
    """Make this machine a device: a Flower SuperNode that trains on DATA with pocketlearn when sampled."""
    from pocketlearn.federated.flower.device import describe_examples
    from pocketlearn.federated.flower.join import JoinOptions, exec_join

    setup = describe_examples(data, device, str(profiles) if profiles else "")
    options = JoinOptions(server, insecure, root_certificates, key, home, local_port, max_wait)
    exec_join(setup, options)  # a lean process (no torch) watches the SuperNode from here on


@fed_app.command("partition")
def partition_command(
    config: Annotated[Path, typer.Argument(help="Run config (TOML).")],
    out: Annotated[Path, typer.Option(help="Folder for the files (client-NNNNN.pt).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set data.num_clients=20.")
                    ] = None,
    clients: Annotated[str | None, typer.Option(help="Only these clients, e.g. 0,1,5 (default: all).")] = None,
) -> None:
    """Write one examples file per client of CONFIG's partition (the simulator's), for `fed join --data`."""
    from pocketlearn.errors import ConfigError
    from pocketlearn.federated.config import load_config
    from pocketlearn.federated.flower.partition import write_partition

    cfg = load_config(config, list(set_ or []))
    try:
        chosen = [int(c) for c in clients.split(",")] if clients else None
    except ValueError:
        raise ConfigError(f"--clients {clients!r}: write client ids separated by commas, e.g. 0,1,5") from None
    paths = write_partition(cfg, out, clients=chosen)
    Console().print(f"wrote {len(paths)} client files to {out} ({paths[0].name} ... {paths[-1].name})")
