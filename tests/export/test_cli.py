import json

import pytest
import torch
from typer.testing import CliRunner

from pocketlearn.checkpoint import load_checkpoint, load_weights
from pocketlearn.cli.main import app
from pocketlearn.data.files import save_examples
from pocketlearn.errors import ConfigError, DataError
from pocketlearn.export import DeviceTrainer
from pocketlearn.models import build_model

runner = CliRunner()


@pytest.fixture
def exported(programs):
    return programs("mlp-bias")


def test_export_starts_from_the_init_checkpoint(exported):
    initial = load_checkpoint(exported.parent / "init.pt")["model"]
    exported_state = DeviceTrainer(exported).state_dict()
    assert exported_state.keys() == initial.keys()
    assert all(torch.equal(exported_state[k], v) for k, v in initial.items())


def test_export_then_device_train_writes_a_loadable_checkpoint(exported, digits, tmp_path):
    save_examples(tmp_path / "data.pt", digits[0][:200], digits[1][:200], client=0)
    out = tmp_path / "trained.pt"
    result = runner.invoke(app, ["device-train", str(exported), "--data", str(tmp_path / "data.pt"), "--steps", "12",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "step     12  loss" in result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["steps"] == 12 and summary["checkpoint"] == str(out)
    assert load_checkpoint(out)["losses"][-1] == pytest.approx(summary["last_loss"])
    load_weights(build_model("digits-mlp"), out)


def test_device_train_refuses_another_batch_size_or_data_shape(exported, tmp_path):
    save_examples(tmp_path / "data.pt", torch.randn(40, 8, 8), torch.zeros(40, dtype=torch.long))
    args = ["device-train", str(exported), "--data", str(tmp_path / "data.pt"), "--steps", "2"]
    batch = runner.invoke(app, [*args, "--batch", "8"])
    assert isinstance(batch.exception, ConfigError) and "exported for batch 16" in str(batch.exception)
    save_examples(tmp_path / "data.pt", torch.randn(40, 7, 7), torch.zeros(40, dtype=torch.long))
    shape = runner.invoke(app, args)
    assert isinstance(shape.exception, DataError) and "shape [7, 7]" in str(shape.exception)


def test_export_unknown_method_or_format_is_a_config_error(tmp_path):
    out = str(tmp_path / "x.pte")
    method = runner.invoke(app, ["export", "digits-mlp", "--method", "nope", "--out", out])
    assert isinstance(method.exception, ConfigError) and "unknown training method 'nope'" in str(method.exception)
    fmt = runner.invoke(app, ["export", "digits-mlp", "--format", "onnx", "--out", out])
    assert isinstance(fmt.exception, ConfigError) and "'executorch'" in str(fmt.exception)
