"""Real devices through Flower against the in-process simulator: rounds per minute and bytes on the wire.

    python benchmarks/deploy.py           # full: writes results/deploy.{json,md}
    python benchmarks/deploy.py --quick   # fewer rounds (CI); results/deploy-quick.*

Workload: digits, MLP 64-128-10, 5 clients (Dirichlet 0.5), all 5 every round, FedAvg, 1 local epoch of SGD.
The same config runs twice: ``fed simulate``'s engine in this process, then ``fed serve`` with 5 ``fed join``
device processes on loopback, TLS and node authentication on (the default). Each device reaches the server
through a byte-counting TCP proxy, so besides our payload bytes (``len(payload)`` of the codec output, what
both runs count) the table shows what crossed the socket: TLS records of Flower's HTTP API, its polling,
heartbeats and the app bundle included. All processes share this machine's cores (one each on a 2-core
box), so a deployed round here measures Flower's per-message process start and polling as much as training.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower.launch import stop_trees
from pocketlearn.federated.flower.partition import write_partition
from pocketlearn.federated.flower.tls import default_names, device_key, self_signed
from pocketlearn.federated.metrics import read_metrics
from readme_table import write_readme_section

RESULTS = Path(__file__).parent / "results"
POCKETLEARN = str(Path(sys.executable).parent / "pocketlearn")
console = Console()


def config(rounds: int, devices: int) -> dict[str, Any]:
    return {"name": "deploy-bench", "rounds": rounds, "clients_per_round": devices, "model": {"name": "digits-mlp"},
            "data": {"name": "digits", "partition": "dirichlet", "num_clients": devices},
            "devices": {"availability": False}, "eval": {"every": rounds}}


class CountingProxy:
    """127.0.0.1:port -> the server, counting bytes each way (one proxy per device: its own wire)."""

    def __init__(self, target_port: int):
        self.target_port, self.up, self.down, self.port = target_port, 0, 0, 0

    async def start(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer, "up"), self._pump(up_reader, writer, "down"))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(1 << 16):
                setattr(self, way, getattr(self, way) + len(data))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def start_proxies(target_port: int, n: int) -> list[CountingProxy]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    proxies = [CountingProxy(target_port) for _ in range(n)]
    for p in proxies:
        asyncio.run_coroutine_threadsafe(p.start(), loop).result(timeout=10)
    return proxies


def simulate(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(raw)
    t0 = time.perf_counter()
    server, _ = build_server(cfg, None)
    setup = time.perf_counter() - t0
    records = server.run(cfg.rounds)
    train = sum(r.round_time_s for r in records)
    return {"params": server.params, "setup_s": setup, "train_s": train, "rounds_per_min": 60 * cfg.rounds / train,
            "bytes_down_per_client_round": records[0].bytes_down // records[0].sampled,
            "bytes_up_per_client_round": records[0].bytes_up // records[0].finished,
            "accuracy": records[-1].eval["accuracy"]}


def deploy(raw: dict[str, Any], work: Path, devices: int) -> dict[str, Any]:
    cfg_path = work / "deploy.toml"
    cfg_path.write_text(json_to_toml(raw))
    run_dir = work / "runs" / raw["name"]
    tls = self_signed(run_dir / "tls", default_names("127.0.0.1"))
    keys = work / "keys"
    for c in range(devices):
        device_key(keys / f"device{c}.key")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    logs = {name: (work / f"{name}.log").open("wb") for name in ["server", *(f"device{c}" for c in range(devices))]}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: Any) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen([POCKETLEARN, *map(str, args)], stdout=logs[name], stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True))
        return procs[-1]

    t0 = time.perf_counter()
    try:
        server = start("server", "fed", "serve", cfg_path, "--runs", work / "runs", "--host", "127.0.0.1", "--port",
                       port, "--authorized-keys", keys, "--round-timeout", 600, "--fresh")
        wait_for(work / "server.log", "Devices join with", server)
        proxies = start_proxies(port, devices)
        for c, f in enumerate(write_partition(parse_config(raw), work / "data")):
            start(f"device{c}", "fed", "join", "--server", f"127.0.0.1:{proxies[c].port}", "--data", f, "--device",
                  "laptop-16g", "--root-certificates", tls.ca, "--key", keys / f"device{c}.key")
        if server.wait(timeout=3600) != 0:
            raise SystemExit(f"fed serve failed:\n{(work / 'server.log').read_text()[-4000:]}")
        wall = time.perf_counter() - t0
    finally:
        stop_trees(procs, grace_s=5)
        for log in logs.values():
            log.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = len(records)
    traffic = summary["traffic"]
    return {"params": torch.load(run_dir / "state.pt")["params"], "wall_s": wall, "setup_s": summary["setup_s"],
            "train_s": summary["train_s"], "rounds_per_min": 60 * rounds / summary["train_s"],
            "bytes_down_per_client_round": records[0]["bytes_down"] // records[0]["sampled"],
            "bytes_up_per_client_round": records[0]["bytes_up"] // records[0]["finished"],
            "engine_bytes_down": traffic["bytes_down"], "engine_bytes_up": traffic["bytes_up"],
            "tcp_bytes_up": [p.up for p in proxies], "tcp_bytes_down": [p.down for p in proxies],
            "device_s_per_round": sum(traffic["device_s"].values()) / len(traffic["device_s"]) / rounds,
            "reply_s_per_round": sum(traffic["reply_s"].values()) / len(traffic["reply_s"]) / rounds,
            "accuracy": summary["accuracy"], "round_times": summary["round_times"]}


def json_to_toml(raw: dict[str, Any]) -> str:
    top = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    sections = [f"[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
                for k, v in raw.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(sections) + "\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"fed serve never said {text!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def table(sim: dict[str, Any], dep: dict[str, Any], rounds: int, devices: int, max_diff: float) -> str:
    per_round_tcp_up = sum(dep["tcp_bytes_up"]) / devices / rounds
    per_round_tcp_down = sum(dep["tcp_bytes_down"]) / devices / rounds
    load = ", ".join(f"{x:.1f}" for x in dep["load_average"])
    lines = [f"{devices} devices, {rounds} rounds, digits MLP (38.6 kB of weights); TLS + node auth on loopback; "
             f"{os.cpu_count()} cores, load average {load} (1, 5, 15 min) at the end.", "",
             "| | simulator | Flower deployment |", "|---|---:|---:|",
             f"| rounds per minute (training rounds only) | {sim['rounds_per_min']:.0f} | "
             f"{dep['rounds_per_min']:.2f} |",
             f"| seconds per round | {60 / sim['rounds_per_min']:.3f} | {60 / dep['rounds_per_min']:.1f} |",
             f"| setup (s) | {sim['setup_s']:.1f} | {dep['setup_s']:.1f} (ServerApp; {dep['wall_s']:.0f} s wall "
             "for the whole command) |",
             f"| a device's round: from the server's send to its reply (s) | - | {dep['reply_s_per_round']:.1f} |",
             f"| ... of which pocketlearn's train handler on the device (s) | - | {dep['device_s_per_round']:.2f} |",
             f"| payload bytes down per device per round | {sim['bytes_down_per_client_round']:,} | "
             f"{dep['bytes_down_per_client_round']:,} |",
             f"| payload bytes up per device per round | {sim['bytes_up_per_client_round']:,} | "
             f"{dep['bytes_up_per_client_round']:,} |",
             f"| TCP bytes down per device per round (TLS, all Flower traffic) | - | {per_round_tcp_down:,.0f} "
             f"({per_round_tcp_down / dep['bytes_down_per_client_round']:.1f}x payload) |",
             f"| TCP bytes up per device per round (TLS, all Flower traffic) | - | {per_round_tcp_up:,.0f} "
             f"({per_round_tcp_up / dep['bytes_up_per_client_round']:.1f}x payload) |",
             f"| final accuracy | {sim['accuracy']:.4f} | {dep['accuracy']:.4f} |",
             f"| largest weight difference, deployed vs simulated | | {max_diff:.1e} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5 (CI)")
    args = parser.parse_args()
    rounds, devices = (2, 5) if args.quick else (5, 5)
    raw = config(rounds, devices)
    stem = "deploy-quick" if args.quick else "deploy"
    work = RESULTS / f"{stem}-runs"
    work.mkdir(parents=True, exist_ok=True)
    with console.status("simulating"):
        sim = simulate(raw)
    with console.status(f"deploying to {devices} device processes (minutes: Flower starts a process per message)"):
        dep = deploy(raw, work, devices)
    dep["load_average"] = os.getloadavg()
    max_diff = max(float((dep["params"][n] - sim["params"][n]).detach().abs().max()) for n in sim["params"])
    text = table(sim, dep, rounds, devices, max_diff)
    out = {k: v for k, v in dep.items() if k != "params"} | {
        "simulator": {k: v for k, v in sim.items() if k != "params"}, "rounds": rounds, "devices": devices,
        "max_weight_diff": max_diff}
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(text)
    if not args.quick:
        write_readme_section("deploy", text)
    console.print(text)


if __name__ == "__main__":
    main()
