import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pocketlearn.checkpoint import CheckpointError
from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import load_config, parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.metrics import read_metrics
from tests.federated.configs import config_with

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"
CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"

SMALL = {"name": "t", "rounds": 4, "clients_per_round": 5,
         "data": {"name": "digits", "partition": "dirichlet", "num_clients": 20},
         "model": {"name": "digits-mlp"}, "eval": {"every": 2}}


def _config(**changes):
    return config_with(SMALL, **changes)


@pytest.mark.skipif(not ANCHORS.exists(), reason="needs ../shared/anchors")
@pytest.mark.parametrize("name,accuracy", [("small", 265 / 360), ("large", 155 / 360)])
def test_the_anchor_workload_ends_at_the_anchors_accuracy(tmp_path, name, accuracy):
    cfg = load_config(CONFIGS / f"anchor-{name}.toml")
    server, _ = build_server(cfg, tmp_path)
    records = server.run(cfg.rounds)
    assert abs(records[-1].eval["accuracy"] - accuracy) <= 1 / 360 + 1e-9


def test_rounds_log_metrics_and_respect_availability(tmp_path):
    cfg = _config(devices={"mix": {"phone-1g": 1.0}, "availability": True})
    server, _ = build_server(cfg, tmp_path)
    sampled = []
    original = server.sampler.sample
    server.sampler.sample = lambda rnd, *more: sampled.append((rnd, original(rnd, *more))) or sampled[-1][1]
    server.run(4)
    for rnd, ids in sampled:
        assert server.sampler.eligible(rnd)[ids].all()
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in lines] == [1, 2, 3, 4]
    assert lines[1]["test_accuracy"] > 0 and "test_accuracy" not in lines[0]
    assert all(r["bytes_down"] > 0 and r["bytes_up"] > 0 and r["sim_time_s"] > 0 for r in lines)


def test_dropouts_and_stragglers_are_left_out_and_counted(tmp_path):
    cfg = _config(devices={"mix": {"mcu-512k": 0.5, "laptop-16g": 0.5}, "availability": False, "dropout": 0.3,
                           "deadline_s": 2.0}, rounds=6)
    server, _ = build_server(cfg, tmp_path)
    records = server.run(6)
    assert sum(r.dropped for r in records) > 0
    assert sum(r.stragglers for r in records) > 0  # 38 kB each way at 25 kB/s: > 2 s on a microcontroller
    for r in records:
        assert r.finished + r.dropped + r.stragglers == r.sampled


def test_a_device_the_method_does_not_fit_gets_the_planners_pick(tmp_path):
    profiles = tmp_path / "devices.toml"
    profiles.write_text('[devices.tiny]\nmemory_budget = "75KiB"\n')
    cfg = _config(devices={"mix": {"tiny": 1.0}, "profiles": str(profiles), "availability": False})
    server, _ = build_server(cfg, tmp_path / "run")
    fit = server.clients.fits[0]
    assert fit.method not in (None, "backprop") and "planner picked" in fit.note
    records = server.run(2)
    assert records[-1].by_method == {fit.method: 5}

    reported = _config(devices={"mix": {"tiny": 1.0}, "profiles": str(profiles), "availability": False},
                       client={"fit": "report"})
    server, _ = build_server(reported, tmp_path / "run2")
    assert server.clients.fits[0].method is None
    assert server.run(1)[0].sampled == 0


def test_invalid_config_names_the_key():
    with pytest.raises(ConfigError, match=r"client\.lr"):
        _config(client={"lr": -1})
    with pytest.raises(ConfigError, match=r"data\.partiton"):
        parse_config({"data": {"partiton": "iid"}})


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "median"])
def test_strategies_run_and_learn(tmp_path, strategy):
    options = {"mu": 0.1} if strategy == "fedprox" else {}
    server, _ = build_server(_config(strategy={"name": strategy, "options": options}, rounds=6,
                                     data={"name": "digits", "partition": "iid", "num_clients": 20}), tmp_path)
    records = server.run(6)
    assert records[-1].eval["accuracy"] > 0.5


def _resume_script(run_dir: Path, kill_in_round: int | None) -> str:
    return textwrap.dedent(f"""
        import os, signal, json
        from pocketlearn.federated.config import parse_config
        from pocketlearn.federated.experiment import build_server
        cfg = parse_config(json.loads({json.dumps(json.dumps(dict(SMALL, rounds=6)))}))
        server, _ = build_server(cfg, __import__("pathlib").Path({str(run_dir)!r}))
        server.resume()
        train = server.engine.train
        def train_or_die(params, ids, rnd, local):
            if rnd == {kill_in_round}:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-round, after round {kill_in_round} - 1 was saved
            return train(params, ids, rnd, local)
        server.engine.train = train_or_die
        server.run(6)
    """)


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="0")
    run = lambda d, k: subprocess.run([sys.executable, "-c", _resume_script(d, k)], env=env)  # noqa: E731
    assert run(tmp_path / "straight", None).returncode == 0
    assert run(tmp_path / "killed", 4).returncode == -9
    assert [r["round"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == [1, 2, 3]
    assert run(tmp_path / "killed", None).returncode == 0
    a = torch.load(tmp_path / "straight" / "state.pt")["params"]
    b = torch.load(tmp_path / "killed" / "state.pt")["params"]
    for name in a:
        assert torch.equal(a[name], b[name])
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "killed" / "metrics.jsonl")
    assert [r["test_accuracy"] for r in straight if "test_accuracy" in r] == \
        [r["test_accuracy"] for r in resumed if "test_accuracy" in r]


def test_a_run_folder_of_another_config_is_not_resumed(tmp_path):
    server, _ = build_server(_config(), tmp_path)
    server.run(1)
    other, _ = build_server(_config(client={"lr": 0.2}), tmp_path)
    with pytest.raises(ConfigError, match="different config"):
        other.resume()


def _logged_rounds(run_dir: Path) -> list[int]:
    """Every round line in the file as written (read_metrics would hide duplicates)."""
    return [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_kill_between_the_metrics_line_and_the_first_checkpoint_logs_round_one_once(tmp_path):
    server, _ = build_server(_config(), tmp_path)

    def killed_before_saving():
        raise KeyboardInterrupt  # what a kill between the round's metrics line and its checkpoint leaves behind

    server.save = killed_before_saving
    with pytest.raises(KeyboardInterrupt):
        server.run(2)
    assert _logged_rounds(tmp_path) == [1] and not (tmp_path / "state.pt").exists()
    again, _ = build_server(_config(), tmp_path)
    assert again.resume() is False
    again.run(2)
    assert _logged_rounds(tmp_path) == [1, 2]
    assert again.discarded_rounds == 1  # for the caller to say that the run started over


def test_a_deleted_checkpoint_restarts_the_run_and_its_metrics(tmp_path):
    server, _ = build_server(_config(), tmp_path)
    server.run(2)
    (tmp_path / "state.pt").unlink()  # what the corrupt-checkpoint error offers
    again, _ = build_server(_config(), tmp_path)
    assert again.resume() is False
    again.run(3)
    assert _logged_rounds(tmp_path) == [1, 2, 3]
    assert again.discarded_rounds == 2


def test_a_run_without_checkpoints_logs_each_round_once_when_run_again(tmp_path):
    for _ in range(2):
        server, _ = build_server(_config(checkpoint=False), tmp_path)
        server.run(2)  # no resume() call: run() itself cuts the file to the round it starts from
    assert _logged_rounds(tmp_path) == [1, 2]


def _damage(path: Path, offset: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_global_weights_is_corrupt_not_resumed(tmp_path):
    server, _ = build_server(_config(), tmp_path)
    server.run(1)
    state = tmp_path / "state.pt"
    weight = next(iter(server.params.values())).detach().numpy().tobytes()
    at = state.read_bytes().find(weight[:64])
    assert at > 0
    _damage(state, at + 17, 1)
    again, _ = build_server(_config(), tmp_path)
    with pytest.raises(CheckpointError, match=r"state\.pt is corrupt.*delete it to restart this run from round 0"):
        again.resume()


def test_sixteen_flipped_bytes_are_corrupt_not_another_config(tmp_path):
    server, _ = build_server(_config(), tmp_path)
    server.run(1)
    state = tmp_path / "state.pt"
    _damage(state, state.read_bytes().find(server.fingerprint.encode()), 16)  # the bytes that decide "config"
    again, _ = build_server(_config(), tmp_path)
    with pytest.raises(CheckpointError, match="corrupt") as caught:
        again.resume()
    assert "different config" not in str(caught.value) and "--fresh" not in str(caught.value)


def test_shakespeare_roles_are_natural_clients_of_a_character_model(tmp_path):
    cfg = parse_config({"name": "lm", "rounds": 1, "clients_per_round": 3, "model": {"name": "tiny-gpt"},
                        "data": {"name": "shakespeare", "partition": "natural", "num_clients": 6},
                        "client": {"lr": 0.01, "batch_size": 32}, "eval": {"batch_size": 256}})
    server, data = build_server(cfg, tmp_path)
    assert len(data.clients) == 6 and "HAMLET (Hamlet)" in data.client_names
    before = server.evaluate(server.model)["loss"]
    record = server.run(1)[0]
    assert record.finished == 3 and record.eval["loss"] < before


def test_hapt_users_are_natural_clients(tmp_path):
    cfg = parse_config({"rounds": 2, "clients_per_round": 6, "model": {"name": "hapt-mlp"},
                        "data": {"name": "hapt", "partition": "natural"}, "client": {"lr": 0.02}})
    server, data = build_server(cfg, tmp_path)
    assert len(data.clients) == 24
    records = server.run(2)
    assert records[-1].finished == 6 and records[-1].eval["accuracy"] > 0.4


def test_compressed_rounds_send_fewer_bytes_and_still_learn(tmp_path):
    runs = {}
    for up, down in [("float32", "float32"), ("q8", "fp16"), ("topk0.1+q8", "fp16"), ("sign", "bf16")]:
        cfg = _config(rounds=8, codec={"up": up, "down": down}, data={"name": "digits", "partition": "iid",
                                                                      "num_clients": 20})
        server, _ = build_server(cfg, tmp_path / up)
        records = server.run(8)
        runs[up] = (sum(r.bytes_up for r in records), sum(r.bytes_down for r in records), records[-1].eval)
    dense_up, dense_down, dense_eval = runs["float32"]
    for up, ratio in (("topk0.1+q8", 12), ("sign", 20)):  # small biases carry most of the header overhead
        assert runs[up][0] < dense_up / ratio and runs[up][1] < dense_down / 1.9
    assert runs["q8"][0] < dense_up / 3.8 and runs["q8"][2]["accuracy"] > dense_eval["accuracy"] - 0.02
    # sparse and 1-bit updates learn more slowly in the first rounds (chance is 0.1)
    assert runs["topk0.1+q8"][2]["accuracy"] > 0.5 and runs["sign"][2]["accuracy"] > 0.4


def test_mezo_seed_exchange_sends_kilobytes_and_replays_the_clients_model(tmp_path):
    common = {"rounds": 2, "clients_per_round": 3, "data": {"name": "digits", "partition": "iid", "num_clients": 10},
              "client": {"method": "mezo", "lr": 1e-2, "options": {"eps": 1e-3}}}
    runs = {}
    for up in ("float32", "seeds"):
        server, _ = build_server(parse_config({**common, "codec": {"up": up}}), tmp_path / up)
        records = server.run(2)
        runs[up] = (sum(r.bytes_up for r in records), {n: p.detach().clone() for n, p in server.params.items()})
    assert runs["seeds"][0] * 50 < runs["float32"][0]
    for name, p in runs["float32"][1].items():  # replayed on the server = trained on the clients, bit for bit
        assert torch.equal(runs["seeds"][1][name], p), name
    with pytest.raises(ConfigError, match="needs client.method = 'mezo'"):
        build_server(_config(codec={"up": "seeds"}), tmp_path / "bad")


def bn_mlp() -> torch.nn.Module:
    """A model whose batch norm keeps running statistics (imported by path in the config below)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10))


def test_batch_norm_running_statistics_are_averaged_with_the_weights(tmp_path):
    cfg = _config(model={"name": "tests.federated.test_server:bn_mlp"}, rounds=2, checkpoint=False,
                  data={"partition": "iid"}, client={"batch_size": 16})  # no batch of one: batch norm refuses it
    server, _ = build_server(cfg, tmp_path)
    norm = server.model[1]
    assert server.params["1.running_var"] is norm.running_var  # the server's model is what rounds change
    server.run(2)
    assert not torch.allclose(norm.running_mean, torch.zeros(32))
    assert not torch.allclose(norm.running_var, torch.ones(32))
    assert bool((norm.running_var > 0).all())


@pytest.mark.parametrize("allowed", [1, 2])
def test_a_round_that_applies_no_update_is_a_failure_not_a_success(tmp_path, allowed):
    from pocketlearn.errors import TrainingError
    from pocketlearn.federated.round import SecureOutcome

    cfg = _config(secagg={"enabled": True}, max_failed_rounds=allowed, rounds=4)
    server, _ = build_server(cfg, tmp_path)
    before = {n: p.clone() for n, p in server.params.items()}
    # the protocol cannot complete (on real devices: a threshold above the neighbourhood, too many dropouts)
    server.engine.secure_mean = lambda *a, **k: SecureOutcome(None, 0, 0, 0, failure="secure aggregation failed: x")
    with pytest.raises(TrainingError, match=f"{allowed} round\\(s\\) in a row failed, max_failed_rounds = {allowed}"):
        server.run(cfg.rounds)
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert len(lines) == allowed and all(line["failed"] == "secure aggregation failed: x" for line in lines)
    assert all(torch.equal(p, before[n]) for n, p in server.params.items())
