"""The anchors' workload interface for a CNN on Fashion-MNIST (the shared one is the digits MLP).

benchmarks/simulator.py links the anchors' run_*.py and measure.py into a scratch folder next to this file (as
``workload.py``) and the shared module (as ``shared_workload.py``), so the anchors' own scripts run this workload
unchanged. Everything but the data, the model and the batch size is the shared module's: the Dirichlet split
as pocketlearn draws it, the schedule, the per-round visiting order, plain SGD and sample-weighted FedAvg.

* data    : Fashion-MNIST as pocketlearn loads it (60,000 train / 10,000 test images), written by the
            benchmark to the .npz named by POCKETLEARN_BENCH_DATA (this venv has no pocketlearn).
* clients : 100 of them. ``cnn``: Dirichlet(0.1) label skew (sizes from a few dozen to a few thousand samples).
            ``cnn-lognormal``: IID labels, sizes from LogNormal(0, 1.5) shares (a handful to ~10,000 samples),
            drawn as pocketlearn's ``lognormal`` partition draws them. POCKETLEARN_BENCH_SPLIT says which.
* model   : pocketlearn's ``cnn``: conv 1->16, pool, conv 16->32, pool, fc 1568->64, fc 64->10,
            initialised after torch.manual_seed(0) in the same layer order.
* local   : 1 epoch of plain SGD, lr 0.05, batch 32.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from shared_workload import *  # noqa: F403  (the interface the run scripts use)
from shared_workload import dirichlet_partition

CONFIGS = {
    "cnn": dict(num_clients=100, clients_per_round=10, rounds=20),
    "cnn-lognormal": dict(num_clients=100, clients_per_round=10, rounds=20),
}
ALPHA = 0.1
SIGMA = 1.5
BATCH_SIZE = 32


@functools.cache
def load_data():
    """Return (X_train, y_train, X_test, y_test) as float32 / int64 numpy arrays."""
    with np.load(os.environ["POCKETLEARN_BENCH_DATA"]) as f:
        return f["x"], f["y"], f["xt"], f["yt"]


@functools.cache
def partitions(num_clients: int) -> tuple:
    _, y_tr, _, _ = load_data()
    if os.environ.get("POCKETLEARN_BENCH_SPLIT") == "lognormal":
        return tuple(lognormal_partition(len(y_tr), num_clients, SIGMA, PARTITION_SEED))  # noqa: F405
    return tuple(dirichlet_partition(y_tr, num_clients, ALPHA, PARTITION_SEED))  # noqa: F405


def lognormal_partition(num_samples: int, num_clients: int, sigma: float, seed: int) -> list[np.ndarray]:
    """Sizes from LogNormal(0, sigma) shares (each at least 1, the remainder to the largest), labels IID."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_samples)
    weights = rng.lognormal(0.0, sigma, num_clients)
    sizes = 1 + np.floor(weights / weights.sum() * (num_samples - num_clients)).astype(int)
    sizes[np.argmax(sizes)] += num_samples - sizes.sum()
    return [np.sort(p).astype(np.int64) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def client_data(cid: int, num_clients: int, rnd: int):
    """Client `cid`'s samples, in the visiting order for round `rnd` (1-based)."""
    X_tr, y_tr, _, _ = load_data()
    idx = partitions(num_clients)[cid]
    idx = idx[np.random.default_rng([SHUFFLE_SEED, rnd, cid]).permutation(len(idx))]  # noqa: F405
    return X_tr[idx], y_tr[idx]


@functools.cache
def mlp_class():
    """The CNN (class; instantiate for a fresh model). Named as the scripts call it."""
    import torch.nn as nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.net(x)

    return CNN


def make_model():
    """The initial global model (identical weights in every framework)."""
    import torch
    torch.manual_seed(MODEL_SEED)  # noqa: F405
    return mlp_class()()


def local_train(model, X: np.ndarray, y: np.ndarray) -> int:
    """1 epoch of SGD over (X, y) in the given order, batch BATCH_SIZE; returns the sample count."""
    import torch
    import torch.nn.functional as F

    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # noqa: F405
    model.train()
    for s in range(0, len(yt), BATCH_SIZE):
        opt.zero_grad()
        F.cross_entropy(model(Xt[s:s + BATCH_SIZE]), yt[s:s + BATCH_SIZE]).backward()
        opt.step()
    return len(yt)


def evaluate(model) -> float:
    """Test-split accuracy of `model`."""
    import torch
    _, _, X_te, y_te = load_data()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(X_te[s:s + 1000])) for s in range(0, len(X_te), 1000)])
    return float((pred.argmax(1).numpy() == y_te).mean())


def common_args(argv=None):
    """The scripts' command line, offering this module's configs."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cnn")
    ap.add_argument("--out", default=None, help="write result JSON here")
    return ap
