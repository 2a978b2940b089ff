import json
import shlex

from typer.testing import CliRunner

from pocketlearn.cli.demo import NEXT_STEPS
from pocketlearn.cli.main import app


def test_a_short_demo_fine_tunes_the_keyboard_privately(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path / "cache"))
    args = ["demo", "--users", "50", "--rounds", "2", "--clients-per-round", "6", "--pretrain-windows", "128",
            "--runs", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in ("pretrained only", "after federated fine-tuning", "ε =", "phone-1g", "what to try next"):
        assert text in result.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["after"]["perplexity"] != summary["before"]["perplexity"]  # the rounds changed the model
    assert 0 < summary["epsilon"] <= 8
    assert {p.name for p in (tmp_path / "demo").glob("*.png")} >= {"keyboard.png", "accuracy.png"}


def test_the_plan_the_demo_suggests_runs():
    command = next(c for c, _ in NEXT_STEPS if c.startswith("pocketlearn plan"))
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    assert "recommended:" in result.output
