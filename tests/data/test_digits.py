import numpy as np

from pocketlearn.data.digits import load_digits_tensors, split_indices


def test_digits_equal_scikit_learn_split_and_scaling_bit_for_bit():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    expected = (scaler.transform(x_tr).astype(np.float32), y_tr, scaler.transform(x_te).astype(np.float32), y_te)
    for ours, theirs in zip(load_digits_tensors(), expected, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs)


def test_split_covers_every_sample_once():
    train, test = split_indices(101, 0.2, seed=3)
    assert len(test) == 21 and sorted(np.concatenate([train, test])) == list(range(101))
