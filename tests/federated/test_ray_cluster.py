"""The Ray engine on a real two-node Ray cluster (a head and a worker node started with `ray start` here)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
CONFIG = ROOT / "benchmarks" / "configs" / "anchor-small.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    address = f"127.0.0.1:{_free_port()}"
    start = [str(RAY), "start", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([*start, "--head", "--port", address.split(":")[1], "--temp-dir", temp,
                        "--include-dashboard", "false"], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([*start, "--address", address], env=env, check=True, capture_output=True, timeout=120)
        _wait_for_nodes(address, env, 2)
        yield address, env
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _node_count(address: str, env: dict) -> tuple[int, str]:
    status = subprocess.run([str(RAY), "status", "--address", address], env=env, capture_output=True, text=True,
                            timeout=60).stdout
    return sum(line.strip().startswith("1 node_") for line in status.splitlines()), status


def _wait_for_nodes(address: str, env: dict, nodes: int, timeout: float = 120.0) -> None:
    """`ray start` returns before the head reports its nodes ("No cluster status"); wait, don't race it."""
    deadline = time.monotonic() + timeout
    while (found := _node_count(address, env))[0] < nodes and time.monotonic() < deadline:
        time.sleep(2)
    assert found[0] == nodes, found[1]


def _simulate(tmp_path, name, *more, env=None):
    out = tmp_path / f"{name}.json"
    subprocess.run([str(Path(sys.executable).parent / "pocketlearn"), "fed", "simulate", str(CONFIG), "--fresh",
                    "--quiet", "--out", str(out), "--runs", str(tmp_path / "runs" / name), *more],
                   env=env, check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())


def test_a_run_on_a_two_node_cluster_gives_the_in_process_result(cluster, tmp_path):
    address, env = cluster
    assert _node_count(address, env)[0] == 2
    on_cluster = _simulate(tmp_path, "cluster", "--engine", "ray", "--address", address, env=env)
    here = _simulate(tmp_path, "here")
    assert on_cluster["accuracy"] == here["accuracy"] and on_cluster["updates"] == here["updates"]
