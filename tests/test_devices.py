import pytest

from pocketlearn.devices import PRESETS, DeviceProfile, format_bytes, get_device, load_profiles, parse_bytes
from pocketlearn.errors import ConfigError


def test_presets_cover_the_device_classes():
    assert {"mcu-512k", "pi-zero-512m", "phone-1g", "phone-4g", "laptop-16g"} <= set(PRESETS)
    budgets = [PRESETS[n].memory_budget_bytes for n in ("mcu-512k", "phone-1g", "phone-4g", "laptop-16g")]
    assert budgets == sorted(budgets)
    assert PRESETS["mcu-512k"].memory_budget_bytes == 512 * 1024


@pytest.mark.parametrize(("text", "expected"), [("512KiB", 524288), ("1.5GB", 1_500_000_000), ("4096", 4096),
                                                ("300 MiB", 300 * 2**20)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_bytes_rejects_nonsense():
    with pytest.raises(ConfigError, match="write e.g. '512MiB'"):
        parse_bytes("lots")


def test_format_bytes():
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(12) == "12 B"


def test_user_profiles_from_toml(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[devices.watch]\nmemory_budget = "64MiB"\ncompute = 0.01\navailability = 0.3\n')
    watch = get_device("watch", path)
    assert watch == DeviceProfile("watch", 64 * 2**20, compute=0.01, availability=0.3)
    assert get_device("phone-1g", path) is PRESETS["phone-1g"]


def test_bad_toml_names_the_key(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[devices.watch]\nmemory = "64MiB"\n')
    with pytest.raises(ConfigError, match=r"unknown keys \['memory'\]"):
        load_profiles(path)
    path.write_text('[devices.watch]\nmemory_budget = "64MiB"\navailability = 2\n')
    with pytest.raises(ConfigError, match="availability must be in"):
        load_profiles(path)


def test_unknown_device_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown device 'toaster'; choose one of"):
        get_device("toaster")
