"""``fed serve``: start a SuperLink for a run folder, submit the run, report progress until it ends.

Secure by default: TLS with the given certificates (or a self-signed CA written to ``RUN/tls``, whose
``ca.pem`` devices need) and node authentication, so only devices whose public keys were registered can join.
The run's state lives in the run folder (checkpoint, metrics, the SuperLink's database): starting the same
command again after a crash resumes from the last completed round, and connected devices carry on.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlearn.errors import TrainingError, raise_problems
from pocketlearn.federated.config import RunConfig
from pocketlearn.federated.flower.deploy import ServeSettings, check_deployable
from pocketlearn.federated.flower.launch import Endpoint, LaunchError, SuperLink, stop_tree, tail, write_app
from pocketlearn.federated.flower.tls import TlsFiles, default_names, public_keys, self_signed

# Flower's own log lines in the run's stream (the ServerApp's lines are shown; these are not, unless verbose).
_FLOWER_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?(INFO|DEBUG|WARNING)\b|^(Using SuperLink|Successfully)|^\s*$")


@dataclass(frozen=True)
class ServeOptions:
    """How the server is reached and secured, and how long it waits for devices."""

    host: str = "0.0.0.0"
    port: int = 9092
    insecure: bool = False  # plain HTTP, no node authentication: loopback tests and trusted networks only
    certificates: TlsFiles | None = None  # None: a self-signed CA and certificate in RUN/tls
    tls_names: tuple[str, ...] = ()  # extra host names or addresses the self-signed certificate covers
    node_auth: bool = True
    authorized_keys: tuple[Path, ...] = ()  # device public keys (files or folders of *.pub) to register
    round_timeout_s: float = 600.0
    min_devices: int = 0  # 0: one device per client of the config
    join_timeout_s: float = 600.0
    verbose: bool = False  # also show Flower's own log lines

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port must be in 1..65535, got {self.port}")
        if self.round_timeout_s <= 0 or self.join_timeout_s <= 0:
            problems.append("round and join timeouts must be positive")
        if self.min_devices < 0:
            problems.append(f"min_devices must be >= 0, got {self.min_devices}")
        if not self.insecure and self.node_auth and not self.authorized_keys:
            problems.append("node authentication is on but no device keys were given: pass --authorized-keys "
                            "FILE_OR_DIR (the .pub files `pocketlearn fed join` writes), or --no-node-auth")
        raise_problems("fed serve", problems)


def serve(config: RunConfig, run_dir: Path, options: ServeOptions, *, fresh: bool = False,
          say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``config`` on real devices until its last round; returns the run's summary."""
    check_deployable(config)
    if config.strategy.name == "dp-fedavg":  # DP noise anyone with the config can regenerate protects nobody
        from pocketlearn.federated.privacy.config import refuse_for_deployment

        refuse_for_deployment(config.strategy.options.get("dp"))
    run_dir = run_dir.resolve()  # Flower's processes and the CLI config want absolute paths
    keys = [k.resolve() for path in options.authorized_keys for k in public_keys(path)] if options.node_auth else []
    if not fresh:
        from pocketlearn.federated.run_folder import check_run_folder

        check_run_folder(config, run_dir)  # before config.json is replaced: one run per folder
    _prepare(run_dir, fresh)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=1))
    tls = None if options.insecure else options.certificates or self_signed(
        run_dir / "tls", default_names(options.host) + list(options.tls_names))
    if tls is not None:
        tls.check()
        tls = TlsFiles(tls.ca.resolve(), tls.cert.resolve(), tls.key.resolve())
    folder = run_dir / "flower"
    settings = ServeSettings(config, run_dir, options.round_timeout_s, options.min_devices, options.join_timeout_s)
    app_dir = write_app(folder / "app", settings.run_config())
    link = SuperLink(folder, Endpoint(options.host, options.port, tls), node_auth=options.node_auth and bool(tls))
    run = None
    main = threading.current_thread() is threading.main_thread()  # (only the main thread may set handlers)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None  # SIGTERM stops the SuperLink too
    try:
        link.start()
        if keys and tls is not None:
            link.register(keys)
        say(_where(options, tls, len(keys)))
        log_path = folder / "serverapp.log"
        log_path.unlink(missing_ok=True)
        run = link.submit(app_dir, log_path)
        _follow(run, link, log_path, options.verbose, say)
        return _summary(run_dir, log_path)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        stop_tree(run)
        link.stop()


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _prepare(run_dir: Path, fresh: bool) -> None:
    """A fresh run keeps only the run folder's TLS files (devices already hold its CA)."""
    if fresh and run_dir.exists():
        for child in run_dir.iterdir():
            if child.name != "tls":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").unlink(missing_ok=True)


def _where(options: ServeOptions, tls: TlsFiles | None, keys: int) -> str:
    host = socket.gethostname() if options.host in ("0.0.0.0", "::", "") else options.host
    security = "plain HTTP (--insecure): no encryption, any device may join" if tls is None else \
        f"TLS; node authentication {f'on, {keys} device key(s) registered' if options.node_auth else 'off'}"
    join = f"pocketlearn fed join --server {host}:{options.port} --data CLIENT_FILE --device PRESET"
    join += " --insecure" if tls is None else f" --root-certificates {tls.ca} --key DEVICE_KEY"
    lines = [f"SuperLink on {options.host}:{options.port} ({security}).", f"Devices join with:\n  {join}"]
    if tls is not None:
        lines.append(f"Each device needs the CA certificate {tls.ca}.")
    return "\n".join(lines)


def _follow(run: Any, link: SuperLink, log_path: Path, verbose: bool, say: Callable[[str], None]) -> None:
    """Echo the ServerApp's lines (rounds, devices) until the run's stream ends."""
    offset = 0
    while True:
        done = run.poll() is not None
        if link.proc is not None and link.proc.poll() is not None:
            raise LaunchError(f"the SuperLink exited with code {link.proc.returncode}:\n{tail(link.log_path)}")
        if log_path.exists():
            with log_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if verbose or not _FLOWER_LINE.match(line):
                    say(line)
        if done:
            return
        time.sleep(0.5)


def _summary(run_dir: Path, log_path: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    deadline = time.monotonic() + 10.0  # the stream may end just before the file lands
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not path.exists():
        raise LaunchError(f"the run ended without a summary; the ServerApp's log ends with:\n{tail(log_path)}")
    summary: dict[str, Any] = json.loads(path.read_text())
    if summary.get("failed"):
        raise TrainingError(f"the run stopped after round {summary['rounds']}: {summary['failed']}")
    return summary
