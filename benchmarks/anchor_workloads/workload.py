"""The anchors' workload interface for pocketlearn's CNN and keyboard workloads (the shared one is the digits MLP).

benchmarks/simulator.py links the anchors' run_*.py and measure.py into a scratch folder next to this file (as
``workload.py``) and the shared module (as ``shared_workload.py``), so the anchors' own scripts run this workload
unchanged. Everything but the data, the model and the batch size is the shared module's: the Dirichlet split
as pocketlearn draws it, the schedule, the per-round visiting order, plain SGD and sample-weighted FedAvg.

POCKETLEARN_BENCH_WORKLOAD says which workload; POCKETLEARN_BENCH_DATA names the .npz the benchmark wrote
with the data as pocketlearn loads it (the anchors' venv has no pocketlearn).
* ``cnn``, ``cnn-lognormal``: Fashion-MNIST (60,000 train / 10,000 test images), 100 clients: Dirichlet(0.1)
  label skew (sizes from a few dozen to a few thousand samples), or IID labels with sizes from LogNormal(0, 1.5)
  shares drawn as pocketlearn's ``lognormal`` partition draws them. Model: pocketlearn's ``cnn`` (conv 1->16,
  pool, conv 16->32, pool, fc 1568->64, fc 64->10), initialised after torch.manual_seed(0) in the same layer
  order. Local: 1 epoch of plain SGD, lr 0.05, batch 32.
* ``keyboard``: next-word prediction on Shakespeare, one client per role (a natural split, the indices in the
  .npz), 24-word windows over a 10,000-word vocabulary. Model: pocketlearn's ``keyboard-gpt`` (a 2-layer,
  128-wide GPT) from scratch, imported from pocketlearn's source (REPO/src on PYTHONPATH: it needs only torch),
  its logits as (batch, vocabulary, position) so that the scripts' ``cross_entropy(model(x), y)`` is the
  mean over tokens (targets of -100 are padding, left out of loss and accuracy). Local: 1 epoch of plain SGD,
  lr 0.05, batch 16. Accuracy is top-1 over the counted test tokens.
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
    "keyboard": dict(num_clients=100, clients_per_round=10, rounds=20),
}
ALPHA = 0.1
SIGMA = 1.5
WORKLOAD = os.environ.get("POCKETLEARN_BENCH_WORKLOAD", "dirichlet")  # dirichlet | lognormal | keyboard
BATCH_SIZE = 16 if WORKLOAD == "keyboard" else 32


@functools.cache
def load_data():
    """Return (X_train, y_train, X_test, y_test) as float32 / int64 numpy arrays."""
    with np.load(os.environ["POCKETLEARN_BENCH_DATA"]) as f:
        return f["x"], f["y"], f["xt"], f["yt"]


def _natural_split() -> list[np.ndarray]:
    """The clients of a natural split, as the benchmark wrote them (their indices, concatenated, and offsets)."""
    with np.load(os.environ["POCKETLEARN_BENCH_DATA"]) as f:
        return np.split(f["indices"], f["offsets"][1:-1])


@functools.cache
def partitions(num_clients: int) -> tuple:
    _, y_tr, _, _ = load_data()
    if WORKLOAD == "keyboard":
        return tuple(_natural_split())
    if WORKLOAD == "lognormal":
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
    """The workload's model class (instantiate for a fresh model). Named as the scripts call it."""
    import torch.nn as nn

    if WORKLOAD == "keyboard":
        from pocketlearn.models.tiny_gpt import GPTConfig, TinyGPT

        class KeyboardGPT(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = TinyGPT(GPTConfig(vocab_size=10_000, block_size=24, n_layer=2, n_head=4, n_embd=128))

            def forward(self, x):
                return self.net(x).transpose(1, 2)  # (batch, vocabulary, position): cross_entropy's layout

        return KeyboardGPT

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
        pred = torch.cat([model(torch.from_numpy(X_te[s:s + 1000])).argmax(1) for s in range(0, len(X_te), 1000)])
    counted = y_te != -100  # a language model's padding targets are not scored (as pocketlearn's evaluate)
    return float((pred.numpy() == y_te)[counted].mean())


def common_args(argv=None):
    """The scripts' command line, offering this module's configs."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cnn")
    ap.add_argument("--out", default=None, help="write result JSON here")
    return ap
