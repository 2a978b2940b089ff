import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.asynchronous import BufferedServer, BufferSettings, Flight
from pocketlearn.federated.experiment import build_server
from tests.federated.configs import config_with

BASE = {"name": "fb", "rounds": 6, "clients_per_round": 8, "seed": 0,
        "data": {"name": "digits", "partition": "dirichlet", "num_clients": 60, "alpha": 0.5},
        "client": {"lr": 0.05}, "eval": {"every": 3}, "devices": {"mix": {"phone-1g": 0.5, "laptop-16g": 0.5}},
        "asynchronous": {"buffer": 4}}


def test_an_update_weighs_less_the_more_versions_it_missed():
    settings = BufferSettings(buffer=2, concurrency=4, staleness=0.5)
    assert settings.weight(0) == 1.0 and settings.weight(3) == pytest.approx(0.5)
    assert BufferSettings(2, 4, staleness=0.0).weight(10) == 1.0  # no discount: plain buffered FedAvg


def test_updates_apply_every_buffer_arrivals_on_a_clock_that_moves_forward(tmp_path):
    server, _ = build_server(config_with(BASE), None)
    assert isinstance(server, BufferedServer)
    records = server.run(6)
    assert [r.finished for r in records] == [4] * 6
    assert [r.sampled for r in records] == [8 + 4] + [4] * 5  # the first 8, then a new client per arrival
    clocks = [r.clock_s for r in records]
    assert all(b >= a for a, b in zip(clocks, clocks[1:], strict=False)) and clocks[-1] > 0
    assert len(server.waiting.flights) == 8  # always `concurrency` clients in flight
    assert {"accuracy", "loss"} <= records[2].eval.keys()


def test_the_buffer_is_the_staleness_weighted_mean_of_its_updates():
    server, _ = build_server(config_with(BASE), None)
    start = {n: p.detach().clone() for n, p in server.params.items()}
    fresh, stale = ({n: torch.ones_like(p) * v for n, p in start.items()} for v in (1.0, 4.0))
    server.round = 3  # the server's model is version 3
    flights = [Flight(1, 3, 0.0, 1.0, fresh, samples=10), Flight(2, 0, 0.0, 1.0, stale, samples=30)]
    server.aggregation.apply(server.params, server._buffered(flights, 4))
    expected = (10 * 1.0 * 1.0 + 30 * 4.0 * (1 + 3) ** -0.5) / 40  # FedAvg of the discounted updates
    for n, p in server.params.items():
        torch.testing.assert_close(p - start[n], torch.full_like(p, expected))


def test_a_resumed_asynchronous_run_ends_where_an_uninterrupted_one_does(tmp_path):
    config = config_with(BASE)
    straight, _ = build_server(config, tmp_path / "straight")
    straight.run(6)
    half, _ = build_server(config, tmp_path / "half")
    half.run(3)
    again, _ = build_server(config, tmp_path / "half")
    assert again.resume() and again.round == 3 and len(again.waiting.flights) == 8
    again.run(6)
    assert again.clock_s == straight.clock_s
    for n, p in straight.params.items():
        assert torch.equal(p, again.params[n])


def test_what_cannot_run_asynchronously_is_refused_before_it_starts():
    with pytest.raises(ConfigError, match="secagg") as err:  # as the config is read
        config_with(BASE, secagg={"enabled": True}, devices={**BASE["devices"], "overselect": 0.3})
    assert "devices.overselect" in str(err.value)
    with pytest.raises(ConfigError, match="can never fill"):
        config_with(BASE, asynchronous={"buffer": 9, "concurrency": 8})


def test_clients_that_drop_out_or_miss_the_deadline_never_reach_the_buffer():
    from pocketlearn.errors import TrainingError

    server, _ = build_server(config_with(BASE, devices={**BASE["devices"], "dropout": 0.3}), None)
    records = server.run(6)
    assert sum(r.dropped for r in records) > 0 and all(r.finished == 4 for r in records)
    hopeless, _ = build_server(config_with(BASE, devices={**BASE["devices"], "deadline_s": 1e-6}), None)
    with pytest.raises(TrainingError, match="missed devices.deadline_s"):
        hopeless.run(1)


def test_the_command_line_summary_says_the_run_was_asynchronous(tmp_path):
    import json

    from typer.testing import CliRunner

    from pocketlearn.cli.main import app

    out = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["fed", "simulate", "examples/phones.toml", "--runs", str(tmp_path / "runs"),
                                      "--set", "rounds=3", "--set", "asynchronous.buffer=5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["asynchronous"] == {"buffer": 5, "concurrency": 20, "staleness": 0.5}
    assert summary["updates"] == 15 and summary["simulated_s"] > 0


def test_a_compressed_update_arrives_when_its_real_payload_is_uploaded():
    dense, _ = build_server(config_with(BASE), None)
    dense_records = dense.run(4)
    server, _ = build_server(config_with(BASE, codec={"up": "q8"}), None)
    records = server.run(4)
    assert sum(r.bytes_up for r in records) < 0.4 * sum(r.bytes_up for r in dense_records)
    trained = [f for f in server.waiting.flights if f.delta is not None]
    assert trained and all(f.up_bytes < server._up_bytes for f in trained)
    for f in trained:  # download, compute and the upload of exactly its payload
        assert f.finish_s == f.start_s + server._seconds(f.client, up_bytes=f.up_bytes)
    assert all(f.finish_s >= server.clock_s for f in server.waiting.flights)
    assert records[-1].clock_s < dense_records[-1].clock_s  # smaller uploads: the same updates sooner
