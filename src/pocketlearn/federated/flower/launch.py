"""Flower's processes, started and stopped for a deployment: the SuperLink, a run submitted to it, SuperNodes.

Flower 1.42 serves its Fleet (devices), Control (``flwr`` CLI) and Runtime (ServerApp) APIs on one HTTP port
of the SuperLink. Everything here passes ``--disable-runtime-dependency-installation``-style settings so
Flower never runs ``uv sync`` for the app (the app's code is the installed pocketlearn), keeps its state in
a private ``FLWR_HOME`` inside the run folder, and stops every process it started, children included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pocketlearn.errors import ConfigError, PocketlearnError
from pocketlearn.federated.flower.tls import TlsFiles

CONNECTION = "pocketlearn"  # the SuperLink connection's name in the private FLWR_HOME/config.toml
APP_COMPONENTS = {"serverapp": "pocketlearn.federated.flower.app:server_app",
                  "clientapp": "pocketlearn.federated.flower.app:client_app"}


class LaunchError(PocketlearnError, RuntimeError):
    """A Flower process did not start, or stopped early; the message quotes its log."""


def flower_command(name: str) -> str:
    """Flower's console script ``name`` from this Python's environment (the one pocketlearn runs in)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise ConfigError(f"Flower's `{name}` command is not installed next to {sys.executable}; install "
                          "pocketlearn's deploy extra into this environment: pip install 'pocketlearn[deploy]'")
    return found


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when its parent dies, even by SIGKILL.

    A crashed ``fed serve`` then takes its SuperLink along (else the port stays taken and the run goes on
    without anyone watching); elsewhere there is no such call and children outlive a killed parent.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only makes the call

    def arrange() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return arrange


def flower_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment Flower's processes run in: a private home, our Python first on PATH, no phoning home.

    The folder the command runs in goes on PYTHONPATH: the apps import a model given as ``module:function``
    from there, as the command itself does.
    """
    home.mkdir(parents=True, exist_ok=True)
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    python_path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p)
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path, "PYTHONPATH": python_path,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", **extra}


def stop_tree(proc: subprocess.Popen[Any] | None, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and every process it started (Flower detaches some into sessions of their own)."""
    stop_trees([proc] if proc is not None else [], grace_s)


def stop_trees(procs: list[subprocess.Popen[Any]], grace_s: float = 10.0) -> None:
    """:func:`stop_tree` for several processes at once: one grace period for all of them."""
    import psutil

    family = []
    for proc in procs:
        if proc.poll() is not None:  # reaped: its children, if any, belong to init now
            continue
        try:
            parent = psutil.Process(proc.pid)
            family += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    _stop(family, grace_s)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Family:
    """A process and those it started, remembered while they live.

    When a parent exits, the kernel hands its children to init: only a list taken earlier still finds them
    (a SuperNode's SuperExec, say, which waits for a parent that is gone but not yet reaped).
    """

    def __init__(self, proc: subprocess.Popen[Any], every_s: float = 1.0):
        import psutil

        self.proc, self.every_s = proc, every_s
        self.members: dict[int, psutil.Process] = {}
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._run, daemon=True)
        self._watch.start()

    def _run(self) -> None:
        while not self._done.is_set() and self.proc.poll() is None:
            self.refresh()
            self._done.wait(self.every_s)

    def refresh(self) -> None:
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            for p in [parent, *parent.children(recursive=True)]:
                self.members.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the process, its current children and any remembered one still running."""
        self._done.set()
        if self.proc.poll() is None:
            self.refresh()
        _stop([p for p in self.members.values() if p.is_running()], grace_s)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stop(processes: list[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace_s``."""
    import psutil

    for p in processes:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for error messages."""
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Endpoint:
    """Where the SuperLink listens, and how to reach it (TLS files, or None for plain HTTP)."""

    host: str
    port: int
    tls: TlsFiles | None

    @property
    def local(self) -> str:
        """The address this machine's own clients (``flwr`` CLI, health checks) use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "[::1]" if self.host == "::" else self.host
        return f"{host}:{self.port}"

    def healthy(self) -> bool:
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        try:
            with urllib.request.urlopen(f"{scheme}://{self.local}/health", timeout=1.0, context=context) as r:
                return bool(r.status == 200)
        except OSError:
            return False


class SuperLink:
    """A ``flower-superlink`` for one run folder: state in a database there, so devices survive a restart."""

    def __init__(self, folder: Path, endpoint: Endpoint, *, node_auth: bool):
        self.folder, self.endpoint, self.node_auth = folder, endpoint, node_auth
        self.env = flower_env(folder / "home")
        self.log_path = folder / "superlink.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.family: Family | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        e = self.endpoint
        cmd = [flower_command("flower-superlink"), "--host", e.host, "--port", str(e.port),
               "--database", str(self.folder / "superlink.db"), "--disable-runtime-dependency-installation"]
        if e.tls is None:
            return [*cmd, "--insecure"]
        cmd += ["--ssl-certfile", str(e.tls.cert), "--ssl-keyfile", str(e.tls.key), "--ssl-ca-certfile", str(e.tls.ca)]
        return [*cmd, "--enable-supernode-auth"] if self.node_auth else cmd

    def start(self, timeout_s: float = 120.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_cli_config()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent())
        self.family = Family(self.proc)
        deadline = time.monotonic() + timeout_s
        while not self.endpoint.healthy():
            if self.proc.poll() is not None:
                raise LaunchError(f"flower-superlink exited with code {self.proc.returncode} (is port "
                                  f"{self.endpoint.port} taken?):\n{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise LaunchError(f"flower-superlink did not answer on {self.endpoint.local} within "
                                  f"{timeout_s:g} s:\n{tail(self.log_path)}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.family is not None:
            self.family.stop()
        self.proc, self.family = None, None
        if self._log:
            self._log.close()
            self._log = None

    def _write_cli_config(self) -> None:
        """The ``flwr`` CLI's connection to this SuperLink, in the private FLWR_HOME."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f"address = {json.dumps(self.endpoint.local)}"]
        tls = self.endpoint.tls
        lines.append(f"root-certificates = {json.dumps(str(tls.ca))}" if tls else "insecure = true")
        (Path(self.env["FLWR_HOME"]) / "config.toml").write_text("\n".join(lines) + "\n")

    def register(self, public_keys: list[Path], timeout_s: float = 120.0) -> None:
        """Register devices' public keys (``flwr supernode register``); a key registered before is fine."""
        procs = [(key, subprocess.Popen([flower_command("flwr"), "supernode", "register", str(key), CONNECTION],
                                        env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                 for key in public_keys]
        failed = []
        for key, proc in procs:
            out, _ = proc.communicate(timeout=timeout_s)
            if proc.returncode != 0 and "already" not in out.lower():
                failed.append(f"{key}: {_plain(out) or f'exit code {proc.returncode}'}")
        if failed:
            raise LaunchError("could not register these device keys:\n  " + "\n  ".join(failed))

    def submit(self, app_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
        """``flwr run APP --stream``: the run starts, and its ServerApp's output goes to ``log_path``."""
        log = log_path.open("ab")
        try:
            return subprocess.Popen([flower_command("flwr"), "run", str(app_dir), CONNECTION, "--stream"],
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent())
        finally:
            log.close()


def _plain(cli_output: str) -> str:
    """The words of a ``flwr`` CLI message, without the box rich draws around it."""
    words = (line.strip(" │╭╮╰╯─") for line in cli_output.splitlines())
    return " ".join(w for w in words if w)


def write_app(app_dir: Path, run_config: dict[str, str | float | int],
              components: dict[str, str] = APP_COMPONENTS) -> Path:
    """A Flower app that is only a ``pyproject.toml``: its components live in the installed pocketlearn."""
    app_dir.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in run_config.items())
    refs = "\n".join(f"{k} = {json.dumps(v)}" for k, v in components.items())
    (app_dir / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "pocketlearn-run"
version = "1.0.0"
description = "A pocketlearn federated run (written by `pocketlearn fed serve`)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "pocketlearn"

[tool.flwr.app.components]
{refs}

[tool.flwr.app.config]
{config}
""")
    return app_dir
