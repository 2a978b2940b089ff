"""Real devices through Flower against the in-process simulator: rounds per minute and bytes on the wire.

    python benchmarks/deploy.py           # full: writes results/deploy.{json,md} and docs/deploy.md
    python benchmarks/deploy.py --quick   # fewer rounds (CI); results/deploy-quick.*

Workload: digits, MLP 64-128-10, 5 clients (Dirichlet 0.5), all 5 every round, FedAvg, 1 local epoch of SGD;
once as is and once with secure aggregation (four more exchanges per round: keys, shares, masked inputs,
unmasking). Each config runs twice: ``fed simulate``'s engine in this process, then ``fed serve`` with 5
``fed join`` device processes on loopback, TLS and node authentication on (the default). Each device reaches the server
through a byte-counting TCP proxy, so besides our payload bytes (``len(payload)`` of the codec output, what
both runs count) the table shows what crossed the socket: TLS records of Flower's HTTP API, its polling,
heartbeats and the app bundle included. Each device keeps one ClientApp process for all its messages (``fed
join``'s worker); all processes share this machine's cores, so a deployed round here measures Flower's polling
(an idle SuperNode asks for messages every 3 s) and HTTP/TLS transfers as much as training.
"""

from __future__ import annotations

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

from harness import Bench, parser
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower.launch import stop_trees
from pocketlearn.federated.flower.partition import write_partition
from pocketlearn.federated.flower.tls import default_names, device_key, self_signed
from pocketlearn.federated.metrics import read_metrics
from pocketlearn.progress import working

POCKETLEARN = str(Path(sys.executable).parent / "pocketlearn")
console = Console()


def config(rounds: int, devices: int, secagg: bool = False) -> dict[str, Any]:
    raw = {"name": "deploy-bench", "rounds": rounds, "clients_per_round": devices, "model": {"name": "digits-mlp"},
           "data": {"name": "digits", "partition": "dirichlet", "num_clients": devices},
           "devices": {"availability": False}, "eval": {"every": rounds}}
    if secagg:
        raw |= {"name": "deploy-bench-secagg", "secagg": {"enabled": True, "clip": 0.5, "threshold": 0.6}}
    return raw


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


def table(runs: dict[str, tuple[dict[str, Any], dict[str, Any], float]], rounds: int, devices: int) -> str:
    """One column pair (simulator, deployment) per variant."""
    load = ", ".join(f"{x:.1f}" for x in next(iter(runs.values()))[1]["load_average"])
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, sim: Any, dep: Any) -> None:
        rows.append((label, [c for pair in zip(sim, dep, strict=True) for c in pair]))

    cols = list(runs.values())
    tcp = {way: [sum(d[f"tcp_bytes_{way}"]) / devices / rounds for _, d, _ in cols] for way in ("down", "up")}
    row("rounds per minute (training rounds only)", [f"{s['rounds_per_min']:.0f}" for s, _, _ in cols],
        [f"{d['rounds_per_min']:.2f}" for _, d, _ in cols])
    row("seconds per round", [f"{60 / s['rounds_per_min']:.3f}" for s, _, _ in cols],
        [f"{60 / d['rounds_per_min']:.1f}" for _, d, _ in cols])
    row("setup (s)", [f"{s['setup_s']:.1f}" for s, _, _ in cols],
        [f"{d['setup_s']:.1f} ({d['wall_s']:.0f} s wall)" for _, d, _ in cols])
    row("a device's train message: from the server's send to its reply (s)", ["-"] * len(cols),
        [f"{d['reply_s_per_round']:.1f}" for _, d, _ in cols])
    row("... of which pocketlearn's train handler on the device (s)", ["-"] * len(cols),
        [f"{d['device_s_per_round']:.2f}" for _, d, _ in cols])
    for way in ("down", "up"):
        key = f"bytes_{way}_per_client_round"
        row(f"payload bytes {way} per device per round", [f"{s[key]:,}" for s, _, _ in cols],
            [f"{d[key]:,}" for _, d, _ in cols])
    for way in ("down", "up"):
        row(f"TCP bytes {way} per device per round (TLS, all Flower traffic)", ["-"] * len(cols),
            [f"{t:,.0f} ({t / d[f'bytes_{way}_per_client_round']:.1f}x payload)"
             for t, (_, d, _) in zip(tcp[way], cols, strict=True)])
    row("final accuracy", [f"{s['accuracy']:.4f}" for s, _, _ in cols], [f"{d['accuracy']:.4f}" for _, d, _ in cols])
    row("largest weight difference, deployed vs simulated", [""] * len(cols), [f"{m:.1e}" for _, _, m in cols])
    head = " | ".join(f"{name}: simulator | {name}: Flower" for name in runs)
    lines = [f"{devices} devices, {rounds} rounds, digits MLP (38.6 kB of weights); TLS + node auth on loopback; "
             f"{os.cpu_count()} cores, load average {load} (1, 5, 15 min) at the end. Secure aggregation's payload "
             "bytes are its protocol messages (keys, sealed shares, masked input, unmasking).", "",
             f"| | {head} |", "|---|" + "---:|" * (2 * len(cols))]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parser(__doc__, "2 rounds instead of 5 (CI)").parse_args()
    rounds, devices = (2, 5) if args.quick else (5, 5)
    bench = Bench("deploy", args.quick)
    runs: dict[str, tuple[dict[str, Any], dict[str, Any], float]] = {}
    for name, secagg in (("plain", False), ("secure aggregation", True)):
        raw = config(rounds, devices, secagg)
        work = bench.path("-runs") / raw["name"]
        work.mkdir(parents=True, exist_ok=True)
        with working(console, f"{name}: simulating"):
            sim = simulate(raw)
        with working(console, f"{name}: deploying to {devices} device processes (a minute or two)"):
            dep = deploy(raw, work, devices)
        dep["load_average"] = os.getloadavg()
        max_diff = max(float((dep["params"][n] - sim["params"][n]).detach().abs().max()) for n in sim["params"])
        runs[name] = (sim, dep, max_diff)
    text = table(runs, rounds, devices)
    out = {name: {k: v for k, v in dep.items() if k != "params"} | {
        "simulator": {k: v for k, v in sim.items() if k != "params"}, "max_weight_diff": max_diff}
        for name, (sim, dep, max_diff) in runs.items()} | {"rounds": rounds, "devices": devices}
    bench.publish(out, text)
    console.print(text)


if __name__ == "__main__":
    main()
