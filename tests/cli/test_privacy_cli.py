import pytest
import typer
from typer.testing import CliRunner

from pocketlearn.cli.privacy import privacy_command
from pocketlearn.federated.privacy import epsilon

app = typer.Typer()
app.command("privacy")(privacy_command)


@app.callback()
def _group() -> None:
    """Make ``privacy`` a subcommand, as in the real app."""


runner = CliRunner()


def test_prints_rdp_and_pld_epsilon():
    result = runner.invoke(app, ["privacy", "--noise", "1.1", "--rate", "0.01", "--rounds", "500"])
    assert result.exit_code == 0, result.output
    assert "rdp" in result.output and "pld" in result.output
    assert f"{epsilon(1.1, 0.01, 500, 1e-5):.4g}" in result.output


def test_calibrates_noise_for_a_target_epsilon():
    result = runner.invoke(app, ["privacy", "--target-epsilon", "2", "--rate", "0.02", "--rounds", "300"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "rdp" in line)
    z, eps = (float(x) for x in row.replace("│", " ").split()[1:3])
    assert eps == pytest.approx(2.0, abs=0.01) and 0.5 < z < 3


def test_with_noise_and_target_counts_rounds_and_needs_one_of_them():
    result = runner.invoke(app, ["privacy", "--noise", "1.0", "--rate", "0.02", "--target-epsilon", "2"])
    assert result.exit_code == 0, result.output
    assert "rounds within" in result.output
    assert runner.invoke(app, ["privacy"]).exit_code == 2
    assert runner.invoke(app, ["privacy", "--noise", "1", "--accountant", "gdp"]).exit_code == 2
