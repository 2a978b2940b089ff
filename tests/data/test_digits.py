import numpy as np
import pytest

from pocketlearn.data.digits import load_digits_tensors, split_indices
from pocketlearn.errors import ConfigError


def test_digits_equal_the_anchor_workload_bit_for_bit(workload):
    ours = load_digits_tensors()
    for mine, theirs in zip(ours, workload.load_data(), strict=True):
        assert mine.numpy().dtype == theirs.dtype  # float32 features, int64 labels
        np.testing.assert_array_equal(mine.numpy(), theirs)


def test_digits_equal_scikit_learn_split_and_scaling_bit_for_bit():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=7)
    scaler = StandardScaler().fit(x_tr)
    expected = (scaler.transform(x_tr).astype(np.float32), y_tr, scaler.transform(x_te).astype(np.float32), y_te)
    for ours, theirs in zip(load_digits_tensors(test_fraction=0.3, seed=7), expected, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs)


def test_training_features_are_standardised():
    x, y, xt, yt = load_digits_tensors()
    assert x.shape == (1437, 64) and xt.shape == (360, 64) and str(y.dtype) == "torch.int64"
    std = x.double().std(0, unbiased=False)
    assert x.double().mean(0).abs().max() < 1e-6
    assert ((std - 1).abs() < 1e-5).sum() + (std == 0).sum() == 64  # constant pixels stay 0 (scale 1)


def test_split_covers_every_sample_once():
    train, test = split_indices(101, 0.2, seed=3)
    assert len(test) == 21 and sorted(np.concatenate([train, test])) == list(range(101))
    with pytest.raises(ConfigError, match="test_fraction"):
        split_indices(10, 1.0, seed=0)
