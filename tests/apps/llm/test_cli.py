import pytest
from typer.testing import CliRunner

from pocketlearn.cli.main import app
from pocketlearn.errors import DataError

runner = CliRunner()


@pytest.mark.parametrize("command", ["generate", "llm", "llm finetune", "llm federated"])
def test_llm_commands_have_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_an_unknown_user_fails_before_the_model_loads_and_lists_valid_ones():
    result = runner.invoke(app, ["generate", "--user", "Hamlet/NOBODY"])
    assert isinstance(result.exception, DataError)  # main() prints it as one line, exit code 2
    assert "is not a known user" in str(result.exception) and "'Hamlet/HAMLET'" in str(result.exception)


def test_an_unknown_method_is_named():
    result = runner.invoke(app, ["llm", "federated", "--mode", "fedsgd"])
    assert result.exit_code != 0
    assert "mode should be one of" in str(result.exception)


def test_finetune_takes_the_model_and_a_quantized_base(monkeypatch):
    """--model/--base reach the model loader and the method options (LoRA on q4 also checkpoints)."""
    from pocketlearn.cli import llm as cli_llm

    seen = {}

    def fake_load(model, base):
        seen["load"] = (model, base)
        raise SystemExit(0)

    monkeypatch.setattr(cli_llm, "_load", fake_load)
    CliRunner().invoke(app, ["llm", "finetune", "--user", "Hamlet/HAMLET", "--model", "gemma3-270m", "--base", "q4"])
    assert seen["load"] == ("gemma3-270m", "q4")
    assert cli_llm._options(["rank=4"], "q4", "lora") == {"rank": 4, "base": "q4", "checkpointing": True}
    assert cli_llm._options(None, "q4", "mezo") == {"base": "q4"}
    assert cli_llm._options(None, "fp32", "lora") == {}
