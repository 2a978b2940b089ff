import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pocketlearn.cli.main import app

runner = CliRunner()
COMMANDS = ["plan", "train", "demo", "devices", "methods", "models", "report", "fed", "fed simulate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_catalogs_list_what_exists():
    assert "phone-1g" in runner.invoke(app, ["devices"]).output
    assert "smollm2-135m" in runner.invoke(app, ["models"]).output


def test_plan_json_without_measurement():
    result = runner.invoke(app, ["plan", "--model", "digits-mlp", "--device", "phone-1g", "--batch", "8",
                                 "--no-measure", "--json", "--methods", "backprop,bias,tinytl"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["recommended"] == "backprop"
    rows = {r["method"]: r for r in plan["methods"]}
    assert rows["tinytl"]["supported"] is False  # an MLP has no convolutions
    assert rows["bias"]["estimate"]["total"] < rows["backprop"]["estimate"]["total"]


def test_train_resumes_from_its_checkpoint(tmp_path):
    args = ["train", "--model", "digits-mlp", "--data", "digits", "--epochs", "1", "--batch", "64",
            "-o", "lr=0.1", "--checkpoint", str(tmp_path / "c.pt")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert '"resumed_from_step": 23' in again.output


def test_errors_are_one_clear_line_and_exit_2():
    done = subprocess.run([sys.executable, "-c", "from pocketlearn.cli.main import main; main()", "plan",
                           "--model", "digits-mlp", "--device", "toaster"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown device 'toaster'; choose one of" in done.stderr
    assert "Traceback" not in done.stderr


def test_train_refuses_a_checkpoint_of_other_settings_unless_asked(tmp_path):
    args = ["train", "--model", "digits-mlp", "--data", "digits", "--epochs", "1", "--batch", "64", "-o", "lr=0.1",
            "--checkpoint", str(tmp_path / "c.pt")]
    assert runner.invoke(app, args).exit_code == 0
    other = args[:8] + ["32"] + args[9:] + ["--seed", "3"]
    refused = runner.invoke(app, other)
    assert refused.exit_code != 0
    message = str(refused.exception)
    assert "batch_size: checkpoint 64, now 32" in message and "seed: checkpoint 0, now 3" in message
    assert "--resume-anyway" in message
    anyway = runner.invoke(app, [*other, "--resume-anyway"])
    assert anyway.exit_code == 0, anyway.output
    assert "resumed anyway with other settings" in anyway.output
    assert '"resumed_from_step": 23' in anyway.output and '"steps": 45' in anyway.output  # 45 batches of 32


def test_train_longer_continues_and_says_so(tmp_path):
    args = ["train", "--model", "digits-mlp", "--data", "digits", "--batch", "64",
            "--checkpoint", str(tmp_path / "c.pt")]
    assert runner.invoke(app, [*args, "--epochs", "1"]).exit_code == 0
    longer = runner.invoke(app, [*args, "--epochs", "2"])
    assert longer.exit_code == 0, longer.output
    assert "continuing the checkpoint's 1-epoch run to 2 epochs" in longer.output
    assert '"steps": 46' in longer.output
    fewer = runner.invoke(app, [*args, "--epochs", "1"])
    assert "epochs: checkpoint 2, now 1" in str(fewer.exception)
