"""scikit-learn's 8x8 digits (1,797 images): tiny, real, and always installed — the test workhorse."""

from __future__ import annotations

import torch
from torch import Tensor


def load_digits_tensors(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardised features (N, 64) and labels, split into train and test: x_train, y_train, x_test, y_test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    std[std < 1e-6] = 1.0  # pixels that never vary in training
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]
