import gzip
import pickle

import numpy as np
import pytest

from pocketlearn.data import hapt
from pocketlearn.errors import DataError


def test_hapt_has_thirty_users_and_twelve_activities():
    sessions = hapt.load_sessions()
    assert len({user for user, _, _ in sessions}) == 30
    assert sum(s.shape[1] for _, s, _ in sessions) > 1_000_000
    data = hapt.load_hapt_windows()
    assert data.x.shape[1:] == (6, 128) and set(data.y.unique().tolist()) == set(range(12))
    assert abs(float(data.x[~np.isin(data.user, hapt.TEST_USERS)].mean())) < 1e-3


def test_each_training_user_is_a_client_and_test_users_are_unseen():
    fed = hapt.federated_hapt()
    assert len(fed.partition) == 24 and fed.partition.names[0] == "user 1"
    assert sum(len(i) for i in fed.partition.indices) == len(fed.x)
    assert len(fed.x_test) > 1000


def test_windows_keep_only_one_labelled_activity():
    signals = np.zeros((6, 10), np.float32)
    labels = np.array([1, 1, 1, 1, 2, 2, 2, 2, -1, -1])
    x, y = hapt._windows(signals, labels, window=4, step=2)
    assert y.tolist() == [0, 1]  # [1,1,1,1] and [2,2,2,2]; mixed and unlabelled windows dropped


def test_the_unpickler_refuses_anything_but_arrays(tmp_path):
    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump({"x": __import__("os").system}, f, protocol=2)
    with gzip.open(evil) as f, pytest.raises(DataError, match="no business"):
        hapt._RestrictedUnpickler(f, encoding="latin1").load()
