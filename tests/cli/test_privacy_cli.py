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


def test_prints_epsilon_of_fixed_size_sampling_as_runs_are_charged():
    result = runner.invoke(app, ["privacy", "--noise", "1.1", "--clients", "1000", "--per-round", "10",
                                 "--rounds", "500"])
    assert result.exit_code == 0, result.output
    assert "rdp" in result.output and "pld" not in result.output  # PLD cannot account fixed-size sampling
    assert "10 of 1000 clients" in " ".join(result.output.split())
    assert f"{epsilon(1.1, 1000, 10, 500, 1e-5):.4g}" in result.output
    everyone = runner.invoke(app, ["privacy", "--noise", "2", "--clients", "10", "--per-round", "10",
                                   "--rounds", "5"])
    assert everyone.exit_code == 0 and "pld" in everyone.output  # no sampling: PLD applies


def test_calibrates_noise_for_a_target_epsilon():
    result = runner.invoke(app, ["privacy", "--target-epsilon", "2", "--clients", "500", "--per-round", "10",
                                 "--rounds", "300"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "rdp" in line)
    z, eps = (float(x) for x in row.replace("│", " ").split()[1:3])
    assert eps == pytest.approx(2.0, abs=0.01) and 0.5 < z < 6


def test_with_noise_and_target_counts_rounds_and_needs_one_of_them():
    result = runner.invoke(app, ["privacy", "--noise", "2.0", "--clients", "500", "--per-round", "10",
                                 "--target-epsilon", "2"])
    assert result.exit_code == 0, result.output
    assert "rounds within" in result.output
    assert runner.invoke(app, ["privacy"]).exit_code == 2
    assert runner.invoke(app, ["privacy", "--noise", "1", "--accountant", "gdp"]).exit_code == 2
