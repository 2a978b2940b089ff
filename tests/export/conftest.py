import pytest
from typer.testing import CliRunner

from pocketlearn.checkpoint import save_checkpoint
from pocketlearn.cli.main import app
from pocketlearn.export import export_training
from pocketlearn.models import build_model

# (model, method, options, batch): the smallest registered MLP and CNN, each method on one of them
PROGRAMS = {
    "mlp-backprop": ("digits-mlp", "backprop", {"lr": 0.1}, 8),
    "cnn-backprop": ("cnn", "backprop", {"lr": 0.05}, 4),
    "mlp-bias": ("digits-mlp", "bias", {"lr": 0.1}, 16),  # through the CLI, from an --init checkpoint
    "cnn-sparse": ("cnn", "sparse", {"lr": 0.05, "last_k": 1}, 4),
    "mlp-lora": ("digits-mlp", "lora", {"lr": 0.1, "rank": 4, "momentum": 0.5}, 8),
}


@pytest.fixture(scope="session")
def programs(tmp_path_factory):
    """Export each program once per session (seconds each); name -> path of the .pte."""
    folder = tmp_path_factory.mktemp("programs")
    out = {}

    def get(name):
        if name not in out:
            model, method, options, batch = PROGRAMS[name]
            out[name] = folder / f"{name}.pte"
            if name == "mlp-bias":
                cli_export(out[name], model, method, options, batch)
            else:
                export_training(model, out[name], method=method, options=options, batch_size=batch)
        return out[name]

    return get


def cli_export(path, model, method, options, batch):
    """``pocketlearn export`` from a plain-model checkpoint written next to ``path`` (init.pt)."""
    save_checkpoint(path.parent / "init.pt", {"model": build_model(model).state_dict()})
    args = ["export", model, "--method", method, "--format", "executorch", "--out", str(path), "--batch", str(batch),
            "--init", str(path.parent / "init.pt")]
    for key, value in options.items():
        args += ["--option", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trainable params" in result.output
