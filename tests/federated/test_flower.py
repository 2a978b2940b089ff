"""Real devices through Flower: the deployment must end where the simulator ends, and survive what devices do.

The first tests route Flower messages in this process (no network), the others start a SuperLink, a ServerApp
and SuperNodes as processes on loopback; every process a test starts, its fixture stops (process trees).
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower.deploy import deployment_problems
from pocketlearn.federated.flower.launch import Endpoint, SuperLink, stop_trees, tail
from pocketlearn.federated.flower.partition import write_partition
from pocketlearn.federated.flower.tls import default_names, device_key, self_signed
from pocketlearn.federated.metrics import read_metrics
from tests.federated.flower_local import assert_same_params, config, deploy_in_process, simulated_params

POCKETLEARN = str(Path(sys.executable).parent / "pocketlearn")


MEZO = {"method": "mezo", "lr": 1e-3, "options": {"eps": 1e-3}}
# central noise from the seed (research mode, which `fed serve` refuses): the deployed run can equal the simulation
DP = {"name": "dp-fedavg", "options": {"dp": {"noise_multiplier": 0.5, "reproducible_noise": True}}}


@pytest.mark.parametrize("sections", [{}, {"codec": {"up": "q8", "down": "fp16"}},
                                      {"client": MEZO, "codec": {"up": "seeds"}}, {"client": {"method": "bias"}},
                                      {"strategy": DP}],
                         ids=["float32", "q8-fp16", "mezo-seeds", "bias", "dp-fedavg"])
def test_flower_messages_reach_the_simulators_weights_and_bytes(tmp_path, sections):
    cfg = config(**sections)
    server, _ = build_server(cfg, None)
    simulated = server.run(cfg.rounds)
    summary, run_dir = deploy_in_process(cfg, tmp_path)
    assert_same_params(torch.load(run_dir / "state.pt")["params"], server.params, atol=1e-6)
    deployed = read_metrics(run_dir / "metrics.jsonl")
    assert [r["bytes_up"] for r in deployed] == [r.bytes_up for r in simulated]
    assert [r["bytes_down"] for r in deployed] == [r.bytes_down for r in simulated]
    # the engine's own count of what it sent and received is the same number
    assert sum(summary["traffic"]["bytes_up"].values()) == summary["bytes_up"]
    assert sum(summary["traffic"]["bytes_down"].values()) == summary["bytes_down"]


def test_a_silent_device_is_left_out_and_the_round_completes(tmp_path):
    summary, run_dir = deploy_in_process(config(), tmp_path, dead=[2], round_timeout_s=0.5)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["finished"] for r in records] == [4, 4, 4]
    assert summary["stragglers"] == 3 and summary["rounds"] == 3


def test_a_device_that_answers_nonsense_is_left_out_and_the_rounds_complete(tmp_path):
    summary, run_dir = deploy_in_process(config(), tmp_path, garbled=[1], round_timeout_s=0.5)
    assert [r["finished"] for r in read_metrics(run_dir / "metrics.jsonl")] == [4, 4, 4]


def test_simulation_only_settings_are_refused_all_at_once():
    mixed = {"method": "backprop", "methods": {"phone-1g": "mezo"}}
    cfg = config(secagg={"enabled": True}, attack={"fraction": 0.2}, client=mixed,
                 devices={"dropout": 0.1, "mix": {"laptop-16g": 0.5, "phone-1g": 0.5}})
    problems = deployment_problems(cfg)
    assert len(problems) == 2
    assert problems[0].startswith("attack.fraction") and problems[1].startswith("devices.dropout")
    assert deployment_problems(config()) == []
    # what devices now do themselves: error feedback, local DP, mixed methods, secure aggregation
    local_dp = {"name": "dp-fedavg", "options": {"dp": {"mode": "local"}}}
    assert deployment_problems(config(codec={"up": "topk0.1"}, strategy=local_dp, client=mixed,
                                      devices={"mix": {"laptop-16g": 0.5, "phone-1g": 0.5}})) == []
    assert deployment_problems(config(secagg={"enabled": True}, client=mixed,
                                      devices={"mix": {"laptop-16g": 0.5, "phone-1g": 0.5}})) == []


def test_the_devices_example_is_deployable():
    from pocketlearn.federated.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "examples" / "devices.toml", [])
    assert cfg.secagg.enabled and deployment_problems(cfg) == []


def test_partition_files_hold_the_simulators_clients(tmp_path):
    cfg = config()
    from pocketlearn.data.files import load_examples
    from pocketlearn.federated.experiment import load_federated_data

    data = load_federated_data(cfg)
    paths = write_partition(cfg, tmp_path, clients=[3])
    x, y, meta = load_examples(paths[0])
    assert meta["client_id"] == 3
    own = data.in_memory("a check").take([3])
    assert torch.equal(x, own.x[own.indices[0]]) and torch.equal(y, own.y[own.indices[0]])
    with pytest.raises(ConfigError, match="do not exist"):
        write_partition(cfg, tmp_path, clients=[9])


# --- processes on loopback ---------------------------------------------------------------------------------------
class Processes:
    """Processes a test started, each with its log; ``stop`` ends them and everything they started."""

    def __init__(self, folder):
        self.folder, self.procs = folder, {}
        self.env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")

    def start(self, name, *args):
        log = (self.folder / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen([POCKETLEARN, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True, cwd=self.folder)
        return self.procs[name]

    def stop_all(self):
        stop_trees(list(self.procs.values()), grace_s=5)

    def logs(self):
        return "\n".join(f"--- {p.name} ---\n{tail(p, 30)}" for p in sorted(self.folder.glob("*.log")))

    def wait(self, name, timeout_s):
        try:
            return self.procs[name].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not finish within {timeout_s} s\n{self.logs()}")


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def _kill_tree(proc):
    """SIGKILL ``proc`` and everything it started: a crash, not a shutdown."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    proc.wait()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SECAGG = {"enabled": True, "clip": 0.5, "threshold": 0.6}


def _write_config(tmp_path, name, secagg=False):
    lines = [f'name = "{name}"', "rounds = 3", "clients_per_round = 5", "[model]", 'name = "digits-mlp"', "[data]",
             'name = "digits"', 'partition = "dirichlet"', "num_clients = 5", "[devices]", "availability = false"]
    if secagg:
        lines += ["[secagg]", "enabled = true", "clip = 0.5", "threshold = 0.6"]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    expected = config(name=name, secagg=SECAGG) if secagg else config(name=name)
    assert parse_config(__import__("tomllib").loads(path.read_text())) == expected
    return path


def _devices(processes, tmp_path, port, *, secure=None, skip=()):
    files = write_partition(config(), tmp_path / "data")
    for c, f in enumerate(files):
        if c in skip:
            continue
        args = ["fed", "join", "--server", f"127.0.0.1:{port}", "--data", f, "--device", "laptop-16g"]
        if secure:
            args += ["--root-certificates", secure["ca"], "--key", secure["keys"] / f"device{c}.key"]
        else:
            args += ["--insecure"]
        processes.start(f"device{c}", *args)


@pytest.mark.timeout(900)
def test_five_devices_over_flower_with_tls_node_auth_and_secure_aggregation_match_the_simulator(tmp_path, processes):
    """Each device keeps its secure-aggregation secrets in its SuperNode's state across the protocol's messages."""
    cfg_path, port = _write_config(tmp_path, "secure", secagg=True), _free_port()
    tls = self_signed(tmp_path / "runs" / "secure" / "tls", default_names("127.0.0.1"))  # serve reuses it
    keys = tmp_path / "keys"
    for c in range(5):
        device_key(keys / f"device{c}.key")
    processes.start("server", "fed", "serve", cfg_path, "--runs", tmp_path / "runs", "--host", "127.0.0.1",
                    "--port", port, "--authorized-keys", keys, "--round-timeout", 300, "--out",
                    tmp_path / "summary.json")
    _wait_for_line(tmp_path / "server.log", "Devices join with", processes)  # keys registered: devices may come
    _devices(processes, tmp_path, port, secure={"ca": tls.ca, "keys": keys})
    assert processes.wait("server", 800) == 0, processes.logs()
    deployed = torch.load(tmp_path / "runs" / "secure" / "state.pt")["params"]
    assert_same_params(deployed, simulated_params(config(name="secure", secagg=SECAGG)))
    records = read_metrics(tmp_path / "runs" / "secure" / "metrics.jsonl")
    assert [r["finished"] for r in records] == [5, 5, 5], processes.logs()


def test_an_unregistered_device_is_refused(tmp_path, processes):
    port = _free_port()
    tls = self_signed(tmp_path / "tls", default_names("127.0.0.1"))
    link = SuperLink(tmp_path / "link", Endpoint("127.0.0.1", port, tls), node_auth=True)
    try:
        link.start()
        link.register([device_key(tmp_path / "known.key")])
        device_key(tmp_path / "stranger.key")
        data = write_partition(config(), tmp_path / "data", clients=[0])[0]
        for who in ("known", "stranger"):
            processes.start(who, "fed", "join", "--server", f"127.0.0.1:{port}", "--data", data, "--device",
                            "laptop-16g", "--root-certificates", tls.ca, "--key", tmp_path / f"{who}.key")
        assert processes.wait("stranger", 120) != 0, processes.logs()
        refusal = (tmp_path / "stranger.log").read_text()
        assert "Flower exit code 305" in refusal and "public key is registered" in refusal, processes.logs()
        deadline = time.monotonic() + 60
        while "SuperNode ID" not in (tmp_path / "known.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "SuperNode ID" in (tmp_path / "known.log").read_text(), processes.logs()
        assert processes.procs["known"].poll() is None
    finally:
        link.stop()


def _wait_for_line(log, text, processes, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if processes.procs["server"].poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{log.name} never said {text!r}\n{processes.logs()}")


def _wait_for_round(run_dir, rnd, processes, timeout_s=400):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(r["round"] >= rnd for r in read_metrics(metrics)):
            return
        if processes.procs["server"].poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"round {rnd} never finished\n{processes.logs()}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_device_killed_mid_round_does_not_stop_the_round(tmp_path, processes):
    cfg_path, port = _write_config(tmp_path, "killed"), _free_port()
    processes.start("server", "fed", "serve", cfg_path, "--runs", tmp_path / "runs", "--host", "127.0.0.1",
                    "--port", port, "--insecure", "--round-timeout", 90)
    _devices(processes, tmp_path, port)
    _wait_for_round(tmp_path / "runs" / "killed", 1, processes)
    _kill_tree(processes.procs["device4"])  # round 2 has been sent: the server starts it as soon as round 1 is logged
    assert processes.wait("server", 600) == 0, processes.logs()
    records = read_metrics(tmp_path / "runs" / "killed" / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[0]["finished"] == 5 and records[1]["finished"] == 4 and records[2]["finished"] == 4
    assert records[1]["stragglers"] == 1


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_restarted_server_resumes_from_its_checkpoint(tmp_path, processes):
    cfg_path, port = _write_config(tmp_path, "restart"), _free_port()
    run_dir = tmp_path / "runs" / "restart"
    serve = ["fed", "serve", cfg_path, "--runs", tmp_path / "runs", "--host", "127.0.0.1", "--port", port,
             "--insecure", "--round-timeout", 300]
    processes.start("server", *serve)
    _devices(processes, tmp_path, port)
    _wait_for_round(run_dir, 1, processes)
    _kill_tree(processes.procs["server"])  # a crash
    assert torch.load(run_dir / "state.pt")["round"] >= 1
    processes.start("server-again", *serve)
    assert processes.wait("server-again", 600) == 0, processes.logs()
    assert "resuming" in (tmp_path / "server-again.log").read_text()
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [(r["round"], r["finished"]) for r in records] == [(1, 5), (2, 5), (3, 5)], processes.logs()
    assert_same_params(torch.load(run_dir / "state.pt")["params"], simulated_params(config(name="restart")))
