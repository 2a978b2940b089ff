"""One verdict on a run config, before anything starts, from every engine and from `pocketlearn config check`."""

import json

import pytest
from typer.testing import CliRunner

from pocketlearn.cli.main import app
from pocketlearn.errors import ConfigError
from pocketlearn.federated.checks import run_problems
from pocketlearn.federated.config import RunConfig, load_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.metrics import read_metrics

EXAMPLE = "examples/devices.toml"  # secure aggregation among 8 devices, 4 neighbours each, threshold 0.6

INVALID = {  # --set items that make the example invalid -> what the one error must say
    "cohort-above-population": (["clients_per_round=12"], "clients_per_round = 12 is more than the 8 clients"),
    "robust-strategy-with-secagg": (["strategy.name='median'"], "secagg with strategy 'median'"),
    "krum-round-too-small": (["secagg.enabled=false", "strategy.name='krum'", "strategy.options.byzantine=3"],
                             "krum needs n > 2f \\+ 2 clients per round"),
    "odd-neighbours": (["clients_per_round=8", "secagg.neighbours=3"], "secagg.neighbours = 3: .* must be even"),
    "seeds-without-mezo": (["codec.up='seeds'"], "codec.up = 'seeds' .* needs client.method = 'mezo'"),
    "local-dp-with-secagg": (["strategy.name='dp-fedavg'", "strategy.options.dp.mode='local'"],
                             "dp.mode = 'local' with secagg"),
    "pinned-device-not-in-mix": (["client.methods.phone-1g='mezo'", "secagg.enabled=false"],
                                 "client.methods pins devices \\['phone-1g'\\]"),
    "buffer-with-secagg": (["asynchronous.buffer=4"], "asynchronous.buffer \\(FedBuff\\): secagg"),
}


def _refusal(args: list[str], tmp_path) -> str:
    """What a command says when refusing; it must refuse before any run folder is made."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError), (args, result.output)
    assert not (tmp_path / "runs").exists(), args
    return str(result.exception)


@pytest.mark.parametrize("case", list(INVALID))
def test_every_engine_refuses_an_invalid_config_with_the_same_message_before_a_round(case, tmp_path):
    sets, match = INVALID[case]
    flags = [f for item in sets for f in ("--set", item)]
    runs = ["--runs", str(tmp_path / "runs")]
    said = {
        "simulate": _refusal(["fed", "simulate", EXAMPLE, *flags, *runs], tmp_path),
        "ray": _refusal(["fed", "simulate", EXAMPLE, *flags, *runs, "--engine", "ray"], tmp_path),
        "serve": _refusal(["fed", "serve", EXAMPLE, *flags, *runs, "--insecure"], tmp_path),
        "partition": _refusal(["fed", "partition", EXAMPLE, *flags, "--out", str(tmp_path / "runs")], tmp_path),
        "check": _refusal(["config", "check", EXAMPLE, *flags], tmp_path),
    }
    assert len(set(said.values())) == 1, said  # the same words everywhere
    assert pytest.raises(ConfigError, load_config, EXAMPLE, sets).match(match)
    assert run_problems(load_config(EXAMPLE)) == []  # the example itself is fine


def test_the_python_api_refuses_the_same_config_in_build_server(tmp_path):
    good = load_config(EXAMPLE).model_dump()
    raw = {**good, "strategy": {"name": "median", "options": {}}}
    config = RunConfig.model_validate(raw)  # a config made in code, not read by load_config
    with pytest.raises(ConfigError, match="secagg with strategy 'median'") as err:
        build_server(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError) as loaded:
        load_config(EXAMPLE, ["strategy.name='median'"])
    assert str(err.value).split(":", 1)[1] == str(loaded.value).split(":", 1)[1]  # same list, other source


def test_every_problem_is_listed_at_once_with_the_keys_to_change():
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, ["clients_per_round=1", "strategy.name='krum'", "codec.up='seeds'"])
    message = str(err.value)
    assert "cannot run (4 problems)" in message
    for key in ("strategy: krum", "secagg with strategy 'krum'", "secagg with clients_per_round = 1", "codec.up"):
        assert f"  - {key}" in message


def test_config_check_prints_the_verdict_and_what_the_threshold_means():
    result = CliRunner().invoke(app, ["config", "check", EXAMPLE, "--set", "clients_per_round=16",
                                      "--set", "data.num_clients=16"])
    assert result.exit_code == 0, result.output
    assert "ok for `fed simulate` (10 rounds of 16 clients" in result.output
    assert "a round of 16 unmasks its sum once 10 masked inputs arrived, and a dropped client's masks once 3 of " \
           "its 5 share holders answer" in result.output
    assert "ok for `fed serve`" in result.output
    dropout = CliRunner().invoke(app, ["config", "check", EXAMPLE, "--set", "devices.dropout=0.1"])
    assert dropout.exit_code == 0 and "not for `fed serve`" in dropout.output and "devices.dropout" in dropout.output
    strict = CliRunner().invoke(app, ["config", "check", EXAMPLE, "--set", "devices.dropout=0.1", "--deploy"])
    assert strict.exit_code != 0 and "cannot run on real devices" in str(strict.exception)


@pytest.mark.parametrize("devices", [8, 16, 1000])
def test_the_devices_example_runs_unchanged_from_8_to_1000_devices(devices, tmp_path):
    """The threshold is a share of each client's neighbourhood and of the round, so it holds at every size."""
    result = CliRunner().invoke(app, ["fed", "simulate", EXAMPLE, "--set", f"clients_per_round={devices}",
                                      "--set", f"data.num_clients={devices}", "--set", "rounds=1",
                                      "--runs", str(tmp_path), "--quiet", "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    (record,) = read_metrics(tmp_path / "devices" / "metrics.jsonl")
    assert record["failed"] is None and record["finished"] == devices
    assert json.loads((tmp_path / "s.json").read_text())["rounds_run"] == 1
