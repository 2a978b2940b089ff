from typer.testing import CliRunner

from pocketlearn.cli.main import app


def test_a_short_demo_plans_trains_and_samples():
    result = CliRunner().invoke(app, ["demo", "--steps", "20"])
    assert result.exit_code == 0, result.output
    assert "held-out next-character loss" in result.output
    assert "a sample from the trained model" in result.output
    for method in ("backprop", "lora", "mezo", "pepita"):
        assert method in result.output  # every method was measured (pepita: n/a on a transformer)
