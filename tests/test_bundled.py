from pathlib import Path

import pytest

from pocketlearn.bundled import config_path, example_names, examples_dir
from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import load_config


def test_a_bundled_example_is_found_by_name_or_by_the_readme_path_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no examples/ here
    assert config_path("phones") == config_path("examples/phones.toml") == examples_dir() / "phones.toml"
    assert {"phones", "mixed", "devices", "ids"} <= set(example_names())
    mixed = load_config("mixed", [])  # its device profiles file is read beside it, not from this folder
    assert Path(mixed.devices.profiles) == examples_dir() / "devices" / "fleet.toml"
    assert Path(mixed.devices.profiles).is_file()


def test_a_relative_profiles_path_is_read_beside_the_config_and_a_set_one_from_here(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "run.toml").write_text('rounds = 1\n[devices]\nprofiles = "fleet.toml"\n')
    monkeypatch.chdir(tmp_path)
    assert load_config("conf/run.toml", []).devices.profiles == str(Path("conf") / "fleet.toml")
    assert load_config("conf/run.toml", ["devices.profiles=mine.toml"]).devices.profiles == "mine.toml"


def test_a_file_that_exists_wins_over_a_bundled_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "phones").write_text("rounds = 1\n")
    assert config_path("phones").resolve() == tmp_path / "phones"


def test_a_missing_config_names_the_bundled_examples(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist.*phones.*pocketlearn fed simulate phones"):
        config_path(tmp_path / "phones.toml")  # a folder of its own: not a bundled example
    with pytest.raises(ConfigError, match="nosuch"):
        config_path("nosuch")
    with pytest.raises(ConfigError, match="is a folder"):
        config_path(tmp_path)
