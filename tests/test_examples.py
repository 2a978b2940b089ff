from pathlib import Path

import pytest

from pocketlearn.apps.ids.run import load_ids_config
from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import load_config

EXAMPLES = Path(__file__).parents[1] / "examples"
RUN_CONFIGS = sorted(p for p in EXAMPLES.glob("*.toml") if p.name != "ids.toml")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_federated_example_is_a_valid_run_config(path):
    assert load_config(path, []).rounds >= 1


def test_the_ids_example_loads_and_a_typo_names_the_fields(tmp_path):
    config = load_ids_config(EXAMPLES / "ids.toml")
    assert config.learner.detector == "page-hinkley" and config.scenario.phases[0] == ("portsweep",)
    (tmp_path / "bad.toml").write_text('[learner]\ndetektor = "adwin"\n')
    with pytest.raises(ConfigError, match="detektor"):
        load_ids_config(tmp_path / "bad.toml")
