import json

import pytest
from typer.testing import CliRunner

from pocketlearn.cli.main import app
from pocketlearn.errors import ConfigError

runner = CliRunner()

CONFIG = """
name = "cli"
rounds = 3
clients_per_round = 4
[data]
name = "digits"
partition = "iid"
num_clients = 12
[devices]
mix = {"phone-4g" = 0.5, "laptop-16g" = 0.5}
[eval]
personalize_clients = 3
"""


def test_simulate_writes_metrics_resumes_and_reports(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    runs = tmp_path / "runs"
    args = ["fed", "simulate", str(config), "--runs", str(runs), "--quiet"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rounds"] == 3 and summary["accuracy"] > 0.3 and summary["bytes_up"] > 0
    steps = summary["client_steps"]  # each client costs its own steps, no padding
    assert steps["real"] > 0 and steps["computed"] == steps["real"] and steps["computed_per_real"] == 1.0
    assert len((runs / "cli" / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((runs / "cli" / "partition.json").read_text())["clients"] == 12
    personal = json.loads((runs / "cli" / "personalization.json").read_text())
    assert len(personal["clients"]) == 3 and summary["personalization"]["accuracy_after"] >= 0

    more = runner.invoke(app, [*args, "--set", "rounds=5", "--out", str(tmp_path / "s2.json")])
    assert more.exit_code == 0, more.output
    again = json.loads((tmp_path / "s2.json").read_text())
    assert again["resumed"] and again["rounds_run"] == 2 and again["rounds"] == 5

    report = runner.invoke(app, ["report", str(runs / "cli")])
    assert report.exit_code == 0, report.output
    assert (runs / "cli" / "accuracy.png").stat().st_size > 1000
    assert (runs / "cli" / "participation.png").stat().st_size > 1000


def test_a_bad_key_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG + "\n[client]\nlrr = 0.1\n")
    result = runner.invoke(app, ["fed", "simulate", str(config), "--runs", str(tmp_path)])
    assert result.exit_code != 0
    assert "client.lrr" in str(result.exception) + result.output


def _simulate(tmp_path, *overrides, fresh=False):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    args = ["fed", "simulate", str(config), "--runs", str(tmp_path / "runs"), "--set", "rounds=1",
            "--set", "eval.personalize_clients=0"]
    for item in overrides:
        args += ["--set", item]
    return runner.invoke(app, [*args, *(["--fresh"] if fresh else [])])


def test_more_clients_per_round_than_clients_is_refused_before_anything_is_written(tmp_path):
    result = _simulate(tmp_path, "clients_per_round=500", "devices.availability=false")
    assert isinstance(result.exception, ConfigError), result.output
    message = str(result.exception)
    assert "clients_per_round = 500" in message and "12 clients" in message and "at most 12" in message
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_holds_one_run(tmp_path):
    first = _simulate(tmp_path, "checkpoint=false", "rounds=2")
    assert first.exit_code == 0, first.output
    metrics = tmp_path / "runs" / "cli" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 2

    again = _simulate(tmp_path, "checkpoint=false", "rounds=2")  # the same run, no checkpoint: starts over
    assert again.exit_code == 0, again.output
    assert "starting over" in again.output and "checkpoint = false" in again.output
    assert [json.loads(line)["round"] for line in metrics.read_text().splitlines()] == [1, 2]

    other = _simulate(tmp_path, "checkpoint=false", "client.lr=0.2", "clients_per_round=3")
    assert isinstance(other.exception, ConfigError), other.output
    message = str(other.exception)
    assert "client.lr" in message and "clients_per_round" in message and "--fresh" in message
    assert "rounds" not in message.replace("clients_per_round", "")
    assert json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())["client"]["lr"] == 0.05

    fresh = _simulate(tmp_path, "checkpoint=false", "client.lr=0.2", fresh=True)
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())["client"]["lr"] == 0.2


def test_more_rounds_continue_a_checkpointed_run(tmp_path):
    assert _simulate(tmp_path).exit_code == 0
    more = _simulate(tmp_path, "rounds=2")
    assert more.exit_code == 0, more.output
    assert "resuming" in more.output
    assert len((tmp_path / "runs" / "cli" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(("model", "path", "absent"), [
    ("small_cnn", "vectorized (", "batched matmul/conv"),  # nn.Unflatten is not a layer the batched matmuls know
    ("bare_mlp", "vectorized (MLP with its backward written out, batched matmul/conv, ", "vmap"),
    ("with_dropout", "one client at a time (the model has layers that cannot be stacked over clients", "timed"),
])
def test_a_model_by_import_path_simulates_resumes_and_says_its_training_path(tmp_path, model, path, absent):
    name = f"tests.models.custom_net:{model}"
    first = _simulate(tmp_path, f"model.name={name}", "checkpoint=true")
    assert first.exit_code == 0, first.output
    line = next(row for row in first.output.splitlines() if "training path:" in row)
    assert f"training path: {path}" in line and absent not in line
    more = _simulate(tmp_path, f"model.name={name}", "rounds=2")
    assert more.exit_code == 0, more.output
    assert "resuming" in more.output and f'"training_path": "{path}' in more.output


def test_a_model_path_that_does_not_import_is_a_config_error(tmp_path):
    result = _simulate(tmp_path, "model.name=tests.models.custom_net:no_such_net")
    assert isinstance(result.exception, ConfigError), result.output
    assert "has no attribute 'no_such_net'" in str(result.exception)


def test_clients_train_in_bf16_when_asked_and_the_summary_says_so(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace("[eval]\npersonalize_clients = 3\n", "[client]\nprecision = \"bf16\"\n"))
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["fed", "simulate", str(config), "--runs", str(tmp_path / "runs"), "--quiet",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["precision"] == "bf16" and summary["accuracy"] > 0.3
    mezo = runner.invoke(app, ["fed", "simulate", str(config), "--runs", str(tmp_path / "runs2"), "--quiet",
                               "--set", "client.method=mezo"])
    assert "needs a method that trains by backpropagation" in str(mezo.exception)
