import pytest

from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import load_config


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "t"\nrounds = 2\n[codec]\nup = "q8"\n')
    return path


def test_a_bad_set_value_is_blamed_on_set_not_on_the_file(config_file):
    with pytest.raises(ConfigError) as err:
        load_config(config_file, ["rounds=abc"])
    message = str(err.value)
    assert "invalid --set value" in message and str(config_file) not in message
    assert "rounds:" in message and "'abc'" in message and "(from --set rounds=abc)" in message


def test_a_bad_file_value_is_blamed_on_the_file_and_a_set_one_on_set(config_file):
    config_file.write_text('rounds = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config_file, ["clients_per_round=0"])
    first, *lines = str(err.value).splitlines()
    assert str(config_file) in first
    assert any(line.strip().startswith("rounds:") and "--set" not in line for line in lines)
    assert any("clients_per_round" in line and "(from --set clients_per_round=0)" in line for line in lines)


@pytest.mark.parametrize(("spec", "form"), [("topk", "topk<fraction>"), ("topk2", "topk<fraction>"),
                                            ("q3", "q<bits>"), ("rand", "rand<fraction>"), ("rot+qx", "q<bits>")])
def test_a_codec_spec_error_names_the_key_and_the_form_it_takes(config_file, spec, form):
    with pytest.raises(ConfigError) as err:
        load_config(config_file, [f"codec.up='{spec}'"])
    message = str(err.value)
    assert "codec.up" in message and form in message and "e.g." in message
    assert "could not convert" not in message and "invalid literal" not in message


def test_seed_exchange_is_a_codec_of_the_uplink_only(config_file):
    assert load_config(config_file, ["codec.up='seeds'", "client.method='mezo'"]).codec.up == "seeds"
    with pytest.raises(ConfigError, match="codec.up = 'seeds' .* needs client.method = 'mezo'"):
        load_config(config_file, ["codec.up='seeds'"])  # backprop sends no seeds: refused as the file is read
    with pytest.raises(ConfigError, match="codec.down"):
        load_config(config_file, ["codec.down='seeds'"])
