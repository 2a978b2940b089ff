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
