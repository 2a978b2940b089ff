from pathlib import Path

import pytest

from pocketlearn.federated.config import load_config

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    config = load_config(path, [])
    assert config.rounds >= 1
