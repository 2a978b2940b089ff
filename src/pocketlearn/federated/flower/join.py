"""``fed join``: this machine becomes a device of a deployment — a Flower SuperNode that trains with pocketlearn.

The SuperNode's node config says where the examples are and which device preset this is. The SuperNode runs
with ``--isolation process``: instead of Flower's fresh ClientApp process per message (torch imported again
each time), ``fed join`` starts one long-lived ClientApp worker (:mod:`pocketlearn.federated.flower.worker`)
that runs every message, restarts it if it dies, and stops it with the SuperNode. Nothing is installed at
run time (Flower's default for SuperNodes; we do not opt in, and the worker cannot).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pocketlearn.errors import raise_problems
from pocketlearn.federated.flower.device import DeviceSetup
from pocketlearn.federated.flower.launch import (
    Family,
    LaunchError,
    die_with_parent,
    flower_command,
    flower_env,
    stop_tree,
)
from pocketlearn.federated.flower.tls import device_key

# Flower's exit codes a user can act on (flwr.supercore.exit.ExitCode); the process itself exits with 1.
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Flower colours its level names even into a pipe
_WEB_SERVER = re.compile(r"^(INFO|WARNING|ERROR|DEBUG):\s")  # uvicorn's lines for the SuperNode's local API
_CONNECTED = "SuperNode ID:"  # Flower's first line once the SuperLink registered this node
_REASON = re.compile(r"\[Errno \d+\] (.+)")  # why a connection failed ("Connection refused", ...)
_EXIT_HINTS = {
    302: "the device key is not an EC private key Flower can read",
    305: "the server could not be reached, or refused this device: check --server and --root-certificates, and "
         "that this device's public key is registered on the server (fed serve --authorized-keys)",
}


@dataclass(frozen=True)
class JoinOptions:
    """How this device reaches the server: address, TLS trust anchor, identity key."""

    server: str
    insecure: bool = False
    root_certificates: Path | None = None
    key: Path | None = None  # private key (created with its .pub if missing); default: ~/.pocketlearn/device.key
    home: Path | None = None  # Flower's working folder for this device; default: a temporary folder
    local_port: int = 0  # the SuperNode's own Runtime API port on 127.0.0.1 (0: any free port)
    max_wait_s: float | None = None  # give up after this long without reaching the server (None: keep trying)

    def __post_init__(self) -> None:
        problems = []
        if ":" not in self.server:
            problems.append(f"--server {self.server!r} needs a port: HOST:PORT, e.g. 192.168.1.10:9092")
        if not self.insecure and self.root_certificates is None:
            problems.append("TLS is on: pass --root-certificates CA.pem (the ca.pem `fed serve` printed), or "
                            "--insecure for a server started with --insecure")
        if self.root_certificates is not None and not self.root_certificates.is_file():
            problems.append(f"--root-certificates {self.root_certificates} does not exist")
        raise_problems("fed join", problems)

    def key_path(self) -> Path:
        return self.key or Path.home() / ".pocketlearn" / "device.key"


def supernode_command(setup: DeviceSetup, options: JoinOptions, home: Path, port: int) -> list[str]:
    """``flower-supernode`` without a SuperExec of its own (``--isolation process``): our worker runs its tasks."""
    node_config = home / "node-config.toml"
    node_config.write_text("".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n"
                                   for k, v in setup.node_config().items()))
    cmd = [flower_command("flower-supernode"), "--superlink", options.server, "--node-config", str(node_config),
           "--host", "127.0.0.1", "--port", str(port), "--isolation", "process"]
    if options.max_wait_s is not None:
        cmd += ["--max-wait-time", str(options.max_wait_s)]
    if options.insecure:
        return [*cmd, "--insecure"]
    return [*cmd, "--root-certificates", str(options.root_certificates),
            "--auth-supernode-private-key", str(options.key_path())]


def worker_command(port: int) -> list[str]:
    """The long-lived ClientApp process for the SuperNode whose Runtime API is on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "pocketlearn.federated.flower.worker", "--runtime-api-address", f"127.0.0.1:{port}"]


class Worker:
    """The ClientApp worker, started again when it dies while the SuperNode runs (else the device goes silent).

    A worker that keeps dying soon after it starts (a broken installation, say) stops ``fed join`` instead.
    """

    def __init__(self, command: list[str], env: dict[str, str], say: Callable[[str], None],
                 settle_s: float = 60.0, max_quick_exits: int = 3):
        self.command, self.env, self.say = command, env, say
        self.settle_s, self.max_quick_exits = settle_s, max_quick_exits
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at, self.quick_exits = 0.0, 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, env=self.env, preexec_fn=die_with_parent())
        self.started_at = time.monotonic()

    def check(self) -> None:
        """Start the worker again if it exited; a LaunchError when it exited soon after starting too often."""
        if self.proc is None or self.proc.poll() is None:
            return
        quick = time.monotonic() - self.started_at < self.settle_s
        self.quick_exits = self.quick_exits + 1 if quick else 0
        if self.quick_exits >= self.max_quick_exits:
            raise LaunchError(f"the ClientApp worker exited {self.quick_exits} times in a row within "
                              f"{self.settle_s:g} s of starting (last exit code {self.proc.returncode}); its log "
                              "above says why (an import that fails: reinstall pocketlearn and flwr into "
                              f"{sys.prefix})")
        self.say(f"the ClientApp worker exited with code {self.proc.returncode}; starting it again")
        self.start()

    def stop(self) -> None:
        stop_tree(self.proc, grace_s=5.0)


def join(setup: DeviceSetup, options: JoinOptions, *, say: Callable[[str], None] = print) -> int:
    """Run the SuperNode and its ClientApp worker until the SuperNode stops (or this process is told to).

    Returns the SuperNode's exit code (1 when the worker could not be kept running).
    """
    if not options.insecure:
        public = device_key(options.key_path())
        say(f"device key: {options.key_path()} (public key {public}: the server registers it with "
            "--authorized-keys)")
    failure = None
    with tempfile.TemporaryDirectory(prefix="pocketlearn-join-") as scratch:
        home = options.home or Path(scratch)
        env = flower_env(home)
        port = options.local_port or _free_port()
        proc = subprocess.Popen(supernode_command(setup, options, home, port), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=die_with_parent())
        family = Family(proc)
        worker = Worker(worker_command(port), env, say)
        worker.start()
        say(f"client {setup.client_id} ({setup.num_examples} examples, device {setup.device}) joining "
            f"{options.server}")
        flower_code: list[int] = []
        log = SuperNodeLog()
        echo = threading.Thread(target=_echo, args=(proc, flower_code, log), daemon=True)
        echo.start()

        def stop(signum: int, _frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)  # cleanup in `finally`: a handler must not wait on the SuperNode

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            code = _watch(proc, worker)
        except KeyboardInterrupt:
            code = 130
        except LaunchError as err:
            code, failure = 1, str(err)
        finally:
            signal.signal(signal.SIGTERM, previous)
            worker.stop()  # first, while the SuperNode can still take its last word on a task
            family.stop()  # the SuperNode's own children outlive it otherwise
            echo.join(timeout=5)
    if failure is not None:
        say(failure)
    elif code not in (0, 130) and not log.connected:
        return _never_connected(options, flower_code[-1] if flower_code else None, log.held)
    elif code not in (0, 130):
        known = flower_code[-1] if flower_code else None
        say(f"the SuperNode stopped (Flower exit code {known}): {_EXIT_HINTS.get(known or 0, 'see its log above')}")
    return code


def _never_connected(options: JoinOptions, known: int | None, held: list[str]) -> int:
    """One line on stderr (the SuperNode's log too, unless the server was simply not there); exit code 2."""
    reason = next((m.group(1).lower() for line in held if (m := _REASON.search(line))), None)
    waited = f" within --max-wait {options.max_wait_s:g} s" if options.max_wait_s is not None else ""
    if known == 305 and reason:
        message = (f"no server answered at {options.server} ({reason}){waited}; start `pocketlearn fed serve` "
                   "there first, or check --server")
    else:
        sys.stderr.writelines(held)
        message = (f"the SuperNode stopped before reaching {options.server}{waited} (Flower exit code {known}): "
                   f"{_EXIT_HINTS.get(known or 0, 'see its log above')}")
    print(f"error: fed join: {message}", file=sys.stderr, flush=True)
    return 2


def _watch(proc: subprocess.Popen[str], worker: Worker, every_s: float = 0.5) -> int:
    """Wait for the SuperNode to exit, keeping its worker running meanwhile; the SuperNode's exit code."""
    while (code := proc.poll()) is None:
        worker.check()
        time.sleep(every_s)
    return code


class SuperNodeLog:
    """The SuperNode's lines, held until it reached the server: a device that never does shows one error instead."""

    def __init__(self) -> None:
        self.connected = False
        self.held: list[str] = []

    def add(self, line: str) -> None:
        if not self.connected and _CONNECTED not in line:
            self.held.append(line)
            return
        if not self.connected:
            self.connected = True
            sys.stdout.writelines(self.held)
            self.held = []
        sys.stdout.write(line)
        sys.stdout.flush()


def _echo(proc: subprocess.Popen[str], codes: list[int], log: SuperNodeLog) -> None:
    """Pass the SuperNode's log on without colour codes or web-server lines, noting Flower's exit code."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = _ANSI.sub("", raw)
        if found := _EXIT_CODE.search(line):
            codes.append(int(found.group(1)))
        if not _WEB_SERVER.match(line):
            log.add(line)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exec_join(setup: DeviceSetup, options: JoinOptions) -> None:
    """Replace this process with a lean one that runs :func:`join`.

    The ``pocketlearn`` command has loaded torch (hundreds of MB) by the time it checked the examples; the
    process that only watches the SuperNode for hours should not keep it on a small device.
    """
    spec = {"setup": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(setup).items()},
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}}
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", __name__, json.dumps(spec)])


def _from_spec(text: str) -> tuple[DeviceSetup, JoinOptions]:
    spec = json.loads(text)
    s, o = spec["setup"], spec["options"]
    paths = ("root_certificates", "key", "home")
    setup = DeviceSetup(Path(s["data_path"]), s["device"], s["client_id"], s["num_examples"], s["profiles"])
    fields: dict[str, Any] = {k: Path(v) if k in paths and v is not None else v for k, v in o.items()}
    return setup, JoinOptions(**fields)


if __name__ == "__main__":
    sys.exit(join(*_from_spec(sys.argv[1])))
