import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from pocketlearn.cli.main import app
from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import RunConfig, TrackingSection
from pocketlearn.federated.run_folder import config_differences
from pocketlearn.federated.server import fingerprint
from pocketlearn.tracking import ScalarLog, scalars

runner = CliRunner()

CONFIG = """
name = "tb"
rounds = 2
clients_per_round = 3
[data]
name = "digits"
partition = "iid"
num_clients = 6
"""


def _logged(folder):
    """tag -> [(step, value)] as TensorBoard shows them (earlier processes' purged events left out)."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _simulate(tmp_path, *extra):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    return runner.invoke(app, ["fed", "simulate", str(config), "--runs", str(tmp_path / "runs"), "--quiet", *extra])


def _expected(metrics_path):
    """Every numeric value of metrics.jsonl by tag: [(round, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        for tag, value in scalars(record).items():
            if tag != "round":
                out.setdefault(tag, []).append((record["round"], value))
    return out


def _assert_same(logged, expected):
    assert set(logged) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag  # each round once, in order
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_a_simulated_run_logs_every_round_of_metrics_jsonl_and_a_resumed_one_only_the_later_rounds(tmp_path):
    tb = tmp_path / "tb"
    first = _simulate(tmp_path, "--set", f"tracking.tensorboard='{tb}'")  # the config's [tracking] section
    assert first.exit_code == 0, first.output
    metrics = tmp_path / "runs" / "tb" / "metrics.jsonl"
    logged = _logged(tb)
    assert {"test_accuracy", "test_loss", "train_loss", "bytes_up", "bytes_down", "finished", "sampled",
            "stragglers", "round_time_s", "sim_time_s"} <= set(logged)
    _assert_same(logged, _expected(metrics))

    more = _simulate(tmp_path, "--set", "rounds=3", "--tensorboard", str(tb), "--out", str(tmp_path / "s.json"))
    assert more.exit_code == 0, more.output  # the flag, resuming the run
    assert json.loads((tmp_path / "s.json").read_text())["resumed"]
    _assert_same(_logged(tb), _expected(metrics))
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2  # the resumed run appended a file of round 3


def test_a_dp_run_logs_its_epsilon(tmp_path):
    tb = tmp_path / "tb"
    result = _simulate(tmp_path, "--tensorboard", str(tb), "--set", "strategy.name='dp-fedavg'", "--set",
                       "strategy.options={dp={noise_multiplier=1.0, clip=1.0}}")
    assert result.exit_code == 0, result.output
    logged = _logged(tb)
    assert [s for s, _ in logged["epsilon"]] == [1, 2] and 0 < logged["epsilon"][0][1] < logged["epsilon"][1][1]
    _assert_same(logged, _expected(tmp_path / "runs" / "tb" / "metrics.jsonl"))


def test_a_killed_writer_s_later_steps_are_replaced_by_the_resumed_run(tmp_path):
    with ScalarLog(tmp_path) as log:  # a run that logged rounds 1-3 and was killed before round 3's checkpoint
        for step in (1, 2, 3):
            log.write(step, {"test_accuracy": step / 10})
    with ScalarLog(tmp_path) as log:  # resumed from round 2's checkpoint: redoes round 3, then round 4
        for step in (3, 4):
            log.write(step, {"test_accuracy": step / 10 + 0.5})
    logged = _logged(tmp_path)["test_accuracy"]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    assert [v for _, v in logged] == pytest.approx([0.1, 0.2, 0.8, 0.9])


def test_scalars_keep_numbers_flatten_dicts_and_leave_out_the_rest():
    record = {"round": 2, "epsilon": None, "dp_noise": "x", "ok": True, "by_method": {"backprop": 3, "mezo": 1},
              "loss": float("nan")}
    out = scalars(record)
    assert set(out) == {"round", "by_method/backprop", "by_method/mezo", "loss"} and out["by_method/mezo"] == 1.0


def test_the_tracking_folder_may_change_between_runs_of_one_folder():
    a, b = RunConfig(), RunConfig(tracking=TrackingSection(tensorboard="/tmp/elsewhere"))
    assert config_differences(a, b) == {}
    assert fingerprint(a.model_dump()) == fingerprint(b.model_dump())  # a checkpoint resumes under either


def test_train_logs_each_step_s_loss_and_the_test_metrics_before_and_after(tmp_path, monkeypatch):
    from pocketlearn.trainer import LocalTrainer

    results = []
    fit = LocalTrainer.fit

    def recording_fit(self, *args, **kwargs):
        results.append(fit(self, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(LocalTrainer, "fit", recording_fit)
    tb = tmp_path / "tb"
    args = ["train", "--model", "digits-mlp", "--data", "digits", "--limit", "200", "--batch", "50",
            "--checkpoint", str(tmp_path / "c.pt"), "--tensorboard", str(tb)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    more = runner.invoke(app, [*args, "--epochs", "2"])  # resumes at step 4, trains steps 5-8
    assert more.exit_code == 0, more.output
    assert "resuming" in more.output

    logged = _logged(tb)
    assert [s for s, _ in logged["train_loss"]] == list(range(1, 9))
    assert [v for _, v in logged["train_loss"]] == pytest.approx(results[0].losses + results[1].losses, rel=1e-6)
    before, after = (json.loads(r.output[r.output.index('{\n  "steps"'):]) for r in (first, more))
    assert [s for s, _ in logged["test_accuracy"]] == [0, 4, 8]  # the resumed run's start was the first's end
    assert [v for _, v in logged["test_accuracy"]] == pytest.approx(
        [before["before"]["accuracy"], before["after"]["accuracy"], after["after"]["accuracy"]])
    assert after["before"]["accuracy"] == pytest.approx(before["after"]["accuracy"])


def test_a_missing_tensorboard_is_one_clear_error_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'pocketlearn\[tracking\]'"):
        ScalarLog(tmp_path / "tb")
    result = _simulate(tmp_path, "--tensorboard", str(tmp_path / "tb"))
    assert isinstance(result.exception, ConfigError) and "pip install" in str(result.exception)  # main(): 1 line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tb").exists()
    train = runner.invoke(app, ["train", "--model", "digits-mlp", "--data", "digits", "--limit", "50",
                                "--tensorboard", str(tmp_path / "tb")])
    assert isinstance(train.exception, ConfigError) and "pip install" in str(train.exception)
    assert not (tmp_path / "tb").exists()


def test_fed_serve_s_round_loop_logs_its_rounds(tmp_path):
    from pocketlearn.federated.flower.deploy import ServeSettings, run_rounds
    from pocketlearn.federated.flower.device import describe_examples
    from pocketlearn.federated.flower.partition import write_partition
    from tests.federated.flower_local import LocalGrid, config

    tb = tmp_path / "tb"
    cfg = config(rounds=2, tracking={"tensorboard": str(tb)})
    files = write_partition(cfg, tmp_path / "data")
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    settings = ServeSettings(cfg, tmp_path / "run", round_timeout_s=5.0, min_devices=len(files), join_timeout_s=1.0)
    run_rounds(LocalGrid(nodes, settings.run_config()), settings.run_config(), say=lambda line: None)
    _assert_same(_logged(tb), _expected(tmp_path / "run" / "metrics.jsonl"))
