"""scikit-learn's 8x8 digits (1,797 images): tiny, real, and always installed — the test workhorse.

Split and scaling are those of the anchor benchmarks (../shared/anchors/workload.py): scikit-learn's
``train_test_split(test_size=0.2, random_state=seed)`` and features standardised by the training mean and
population std. The file is read straight from scikit-learn's package data, and the split drawn the way
``train_test_split`` draws it, without importing scikit-learn (~1 s); tests check both against
scikit-learn and against the anchors' ``load_data()`` bit for bit.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError, DataError


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec and \
        spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise DataError("the digits data ships inside scikit-learn's package (its data only is read, no scipy "
                        "needed): pip install --no-deps scikit-learn")
    raw = path.read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices as ``train_test_split(test_size=test_fraction, random_state=seed)`` picks them."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = math.ceil(test_fraction * n)
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def load_digits_tensors(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised features (N, 64) float32 and int64 labels: x_train, y_train, x_test, y_test."""
    x, y = _load_digits()
    train, test = split_indices(len(x), test_fraction, seed)
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1.0  # pixels that never vary in training (as StandardScaler does)
    x = ((x - mean) / std).astype(np.float32)
    return (torch.from_numpy(x[train]), torch.from_numpy(y[train]),
            torch.from_numpy(x[test]), torch.from_numpy(y[test]))
