import importlib.util

import pytest

from pocketlearn.extras import EXTRAS, MissingExtra, installed_extras, missing_extra, require


def test_a_module_of_an_extra_names_the_extra_and_a_core_one_nothing():
    assert "pip install 'pocketlearn[deploy]'" in str(missing_extra("flwr.serverapp"))
    assert missing_extra("torch") is None and missing_extra("") is None


def test_require_raises_only_for_what_is_missing(monkeypatch):
    require("ray")  # installed in the test environment
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(MissingExtra, match=r"pocketlearn\[ray\]"):
        require("ray")
    assert installed_extras()["ray"] is False and installed_extras()["llm"] is True


def test_every_extra_in_the_table_is_declared_in_pyproject():
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = declared["optional-dependencies"]
    assert {extra for extra, _ in EXTRAS.values()} <= set(extras) - {"all", "dev"}
    (everything,) = extras["all"]
    assert set(everything.removeprefix("pocketlearn[").removesuffix("]").split(",")) == set(extras) - {"all", "dev"}


@pytest.mark.parametrize("command", [
    ["train", "--model", "digits-mlp", "--data", "digits", "--limit", "256"],
    ["fed", "simulate", "examples/phones.toml", "--set", "rounds=2", "--runs", "{tmp}"],
])
def test_the_core_commands_import_no_extra(command, tmp_path):
    """What `train` and `fed simulate` import must come with the core install (no transformers, Ray, Flower...)."""
    import subprocess
    import sys
    from pathlib import Path

    listing = tmp_path / "modules.txt"
    code = (f"import atexit, sys, runpy; atexit.register(lambda: open({str(listing)!r}, 'w').write("
            "'\\n'.join(sys.modules))); sys.argv[0] = 'pocketlearn'; "
            "runpy.run_module('pocketlearn.cli.main', run_name='__main__')")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in listing.read_text().split()}
    assert not loaded & set(EXTRAS), sorted(loaded & set(EXTRAS))
