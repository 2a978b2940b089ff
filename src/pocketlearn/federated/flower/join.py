"""``fed join``: this machine becomes a device of a deployment — a Flower SuperNode that trains with pocketlearn.

The SuperNode's node config says where the examples are and which device preset this is; Flower starts a
ClientApp process (``pocketlearn.federated.flower.app:client_app``) for each message the server sends. The
SuperNode never installs anything at run time (Flower's default for SuperNodes; we do not opt in).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pocketlearn.errors import ConfigError
from pocketlearn.federated.flower.device import DeviceSetup
from pocketlearn.federated.flower.launch import Family, die_with_parent, flower_command, flower_env
from pocketlearn.federated.flower.tls import device_key

# Flower's exit codes a user can act on (flwr.supercore.exit.ExitCode); the process itself exits with 1.
_EXIT_CODE = re.compile(r"Exit Code: (\d+)")
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
        if problems:
            raise ConfigError("fed join: " + "; ".join(problems))

    def key_path(self) -> Path:
        return self.key or Path.home() / ".pocketlearn" / "device.key"


def supernode_command(setup: DeviceSetup, options: JoinOptions, home: Path) -> list[str]:
    node_config = home / "node-config.toml"
    node_config.write_text("".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n"
                                   for k, v in setup.node_config().items()))
    port = options.local_port or _free_port()
    cmd = [flower_command("flower-supernode"), "--superlink", options.server, "--node-config", str(node_config),
           "--host", "127.0.0.1", "--port", str(port)]
    if options.max_wait_s is not None:
        cmd += ["--max-wait-time", str(options.max_wait_s)]
    if options.insecure:
        return [*cmd, "--insecure"]
    return [*cmd, "--root-certificates", str(options.root_certificates),
            "--auth-supernode-private-key", str(options.key_path())]


def join(setup: DeviceSetup, options: JoinOptions, *, say: Callable[[str], None] = print) -> int:
    """Run the SuperNode until it stops (or this process is told to); returns its exit code."""
    if not options.insecure:
        public = device_key(options.key_path())
        say(f"device key: {options.key_path()} (public key {public}: the server registers it with "
            "--authorized-keys)")
    with tempfile.TemporaryDirectory(prefix="pocketlearn-join-") as scratch:
        home = options.home or Path(scratch)
        env = flower_env(home, FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2")
        proc = subprocess.Popen(supernode_command(setup, options, home), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=die_with_parent())
        family = Family(proc)
        say(f"client {setup.client_id} ({setup.num_examples} examples, device {setup.device}) joining "
            f"{options.server}")
        flower_code: list[int] = []
        echo = threading.Thread(target=_echo, args=(proc, flower_code), daemon=True)
        echo.start()

        def stop(signum: int, _frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)  # cleanup in `finally`: a handler must not wait on the SuperNode

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            code = 130
        finally:
            signal.signal(signal.SIGTERM, previous)
            family.stop()  # the SuperNode's SuperExec (and a ClientApp mid-message) outlive it otherwise
            echo.join(timeout=5)
    if code not in (0, 130):
        known = flower_code[-1] if flower_code else None
        say(f"the SuperNode stopped (Flower exit code {known}): {_EXIT_HINTS.get(known or 0, 'see its log above')}")
    return code


def _echo(proc: subprocess.Popen[str], codes: list[int]) -> None:
    """Pass the SuperNode's log through, noting Flower's exit code (the process itself exits with 1)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if found := _EXIT_CODE.search(line):
            codes.append(int(found.group(1)))


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
