from pathlib import Path

import pytest

from pocketlearn.apps.ids.run import load_ids_config
from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import load_config

EXAMPLES = Path(__file__).parents[1] / "examples"
RUN_CONFIGS = sorted(p for p in EXAMPLES.glob("*.toml") if p.name not in ("ids.toml", "ui.toml"))  # own formats


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_federated_example_is_a_valid_run_config(path):
    assert load_config(path, []).rounds >= 1


def test_the_ids_example_loads_and_a_typo_names_the_fields(tmp_path):
    config = load_ids_config(EXAMPLES / "ids.toml")
    assert config.learner.detector == "page-hinkley" and config.scenario.phases[0] == ("portsweep",)
    (tmp_path / "bad.toml").write_text('[learner]\ndetektor = "adwin"\n')
    with pytest.raises(ConfigError, match="detektor"):
        load_ids_config(tmp_path / "bad.toml")


def test_the_ui_example_loads_and_a_typo_names_the_field(tmp_path):
    from pocketlearn.apps.ui.job import load_job

    job = load_job(EXAMPLES / "ui.toml")
    assert job.name == "ui" and job.crawl.apps == [] and job.learn.devices == 4
    assert load_job("ui") == job  # the bundled example by name
    (tmp_path / "bad.toml").write_text('[learn]\ndevises = 4\n')
    with pytest.raises(ConfigError, match="learn.devises"):
        load_job(tmp_path / "bad.toml")


# Each example at --set rounds=1 through the CLI, under a time limit in seconds: many times what its header
# states, as a busy shared 2-core machine runs them up to 10x slower; a setup that regresses to minutes fails.
# The CCT ones run with `pytest -m slow`; the rest stay in the default suite.
ONE_ROUND_LIMIT_S = {"devices.toml": 60, "har.toml": 60, "mixed.toml": 300, "phones.toml": 60, "synthetic.toml": 60,
                     "transfer.toml": 400, "vision-quick.toml": 120, "vision.toml": 400}
SLOW = {"transfer.toml", "vision.toml", "vision-quick.toml"}  # EfficientNet or CCT rounds, Fashion-MNIST
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _one_round_case(path: Path) -> object:
    marks = [pytest.mark.timeout(ONE_ROUND_LIMIT_S[path.name])]
    if path.name in SLOW:
        marks.append(pytest.mark.slow)
    if "fashion-mnist" in path.read_text() and not (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        marks.append(pytest.mark.skip(reason=f"needs Debian's dataset-fashion-mnist in {FASHION_MNIST} "
                                             "(sudo apt-get install dataset-fashion-mnist)"))
    return pytest.param(path, marks=marks, id=path.name)


def test_every_example_has_a_one_round_time_limit_and_states_its_duration():
    assert sorted(ONE_ROUND_LIMIT_S) == [p.name for p in RUN_CONFIGS]
    for path in [*RUN_CONFIGS, EXAMPLES / "ids.toml", EXAMPLES / "ui.toml"]:
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        assert "on 2 cores" in header, f"{path.name}: its header comment states no duration on 2 cores"


@pytest.mark.parametrize("path", [_one_round_case(p) for p in RUN_CONFIGS])
def test_every_federated_example_runs_one_round_through_the_cli(path, tmp_path):
    import json

    from typer.testing import CliRunner

    from pocketlearn.cli.main import app

    out = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["fed", "simulate", str(path), "--set", "rounds=1", "--runs",
                                      str(tmp_path / "runs"), "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert len(summary["round_times"]) == 1 and summary["setup_s"] >= 0
    assert (tmp_path / "runs" / load_config(path, []).name / "metrics.jsonl").is_file()


@pytest.mark.timeout(60)
def test_the_ids_example_runs_whole_through_the_cli():
    from typer.testing import CliRunner

    from pocketlearn.cli.main import app

    result = CliRunner().invoke(app, ["ids", "--config", str(EXAMPLES / "ids.toml")])
    assert result.exit_code == 0, result.output
    assert "on-device" in result.output and "federated rounds:" in result.output
