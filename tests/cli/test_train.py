import json

import pytest
from typer.testing import CliRunner

from pocketlearn.cli.main import app

runner = CliRunner()


def _train(tmp_path, *extra):
    args = ["train", "--model", "digits-mlp", "--data", "digits", "--batch", "64", "-o", "lr=0.1",
            "--checkpoint", str(tmp_path / "c.pt")]
    return runner.invoke(app, [*args, *extra])


def _summary(output):
    return json.loads(output[output.index('{\n  "steps"'):])


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_a_limit_below_one_is_refused(limit):
    result = runner.invoke(app, ["train", "--model", "digits-mlp", "--data", "digits", "--limit", limit])
    assert result.exit_code == 2
    assert "--limit" in result.stderr and ">=1" in result.stderr


def test_a_limit_is_applied_to_every_data_set():
    from pocketlearn.data import load_tensors
    from pocketlearn.errors import ConfigError

    x, y, xt, yt = load_tensors("digits", limit=100)
    assert len(x) == len(y) == 100 and len(xt) <= 100
    with pytest.raises(ConfigError, match="limit 0"):
        load_tensors("digits", limit=0)


def test_a_resumed_run_says_so_and_evaluates_the_weights_it_starts_from(tmp_path):
    first = _train(tmp_path, "--epochs", "1")
    assert first.exit_code == 0, first.output
    longer = _train(tmp_path, "--epochs", "2")
    assert longer.exit_code == 0, longer.output
    assert "resuming" in longer.output and "from step 23/46" in longer.output
    assert _summary(longer.output)["before"] == pytest.approx(_summary(first.output)["after"])


def test_a_complete_checkpoint_says_so_instead_of_training(tmp_path):
    assert _train(tmp_path, "--epochs", "1").exit_code == 0
    again = _train(tmp_path, "--epochs", "1")
    assert again.exit_code == 0, again.output
    assert "is complete: 23/23 steps" in again.output and "--epochs 2" in again.output
    assert "loss nan" not in again.output and "0/23" not in again.output and "training (" not in again.output
    assert _summary(again.output)["steps"] == 23


def test_a_lora_checkpoint_of_another_rank_names_the_ranks(tmp_path):
    from pocketlearn.checkpoint import CheckpointError

    args = ["--method", "lora", "--limit", "100", "--epochs", "1"]
    assert _train(tmp_path, *args, "-o", "rank=4").exit_code == 0
    other = _train(tmp_path, *args, "-o", "rank=8", "--resume-anyway")
    assert isinstance(other.exception, CheckpointError), other.output
    message = str(other.exception)
    assert "LoRA rank 4" in message and "rank 8" in message and "-o rank=4" in message
    assert "size mismatch" not in message and "lora_B" not in message


def test_a_model_by_import_path_trains_and_resumes(tmp_path):
    args = ["train", "--model", "tests.models.custom_net:small_cnn", "--data", "digits", "--batch", "64",
            "--limit", "256", "-o", "lr=0.1", "--checkpoint", str(tmp_path / "c.pt")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert _summary(first.output)["steps"] == 4
    again = runner.invoke(app, [*args[:-4], "--epochs", "2", *args[-4:]])
    assert again.exit_code == 0, again.output
    assert "from step 4/8" in again.output  # the checkpoint's settings (its model name) match


def test_bf16_trains_to_fp32s_accuracy_and_an_unknown_precision_is_refused(tmp_path):
    fp32 = _train(tmp_path / "a", "--epochs", "3")
    bf16 = _train(tmp_path / "b", "--epochs", "3", "-o", "precision=bf16")
    assert fp32.exit_code == 0 and bf16.exit_code == 0, bf16.output
    a, b = _summary(fp32.output), _summary(bf16.output)
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    assert b["after"]["accuracy"] > 0.8 and b["after"]["accuracy"] == pytest.approx(a["after"]["accuracy"], abs=0.03)
    assert b["after"]["loss"] != a["after"]["loss"]  # it did train in bf16
    bad = _train(tmp_path / "c", "-o", "precision=fp8")
    assert "precision should be 'fp32' or 'bf16'" in str(bad.exception)  # main() prints it as one line, exit 2
