import json

from typer.testing import CliRunner

from pocketlearn.cli.main import app

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
