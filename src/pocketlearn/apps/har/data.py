"""Per-user splits of HAPT windows: who pretrains, and each remaining user's own adapt/held-out windows.

Windows are kept in recording order, so a user personalises on the first part of their recordings and is
scored on what came later, as on a phone. HAPT recorded each user twice, with the phone worn differently
(belt, then where they liked), and within a session every activity is one bout in a fixed order (static
first). So by default the first part of every (session, activity) bout adapts and the rest of that bout is
scored (``by="bout"``): the same placements and activities, later in time. ``by="user"`` adapts on the first
part of all a user's windows, i.e. the first placement, and is scored on the other placement. Channels are
re-standardised with the pretraining users' statistics only, so nothing about a personalising user
leaks into the base model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError

ALL_USERS = tuple(range(1, 31))


@dataclass(frozen=True)
class UserData:
    """One user's windows: the first part to personalise on, the rest to score on."""

    user: int
    x_adapt: Tensor
    y_adapt: Tensor
    x_test: Tensor
    y_test: Tensor
    adapt_index: np.ndarray  # positions in the full window list, to check splits
    test_index: np.ndarray


@dataclass(frozen=True)
class HarSplit:
    pretrain_users: tuple[int, ...]
    x_pretrain: Tensor
    y_pretrain: Tensor
    users: dict[int, UserData]  # the personalising users
    pretrain_index: np.ndarray
    window_user: np.ndarray  # user id of every window in the full list
    window_bout: np.ndarray  # (session, activity) bout of every window: session * 100 + activity


def _check_users(pretrain_users: tuple[int, ...], users: tuple[int, ...]) -> None:
    bad = sorted(set(pretrain_users + users) - set(ALL_USERS))
    if bad:
        raise ConfigError(f"HAPT users are 1-30, got {bad}; pick users from that range")
    shared = sorted(set(pretrain_users) & set(users))
    if shared:
        raise ConfigError(f"users {shared} are both pretraining and personalising users; a user is one or the other")


@functools.cache
def window_sessions(window: int = 128, step: int = 64) -> np.ndarray:
    """Recording session (0, 1, ...) of every window of :func:`load_hapt_windows`, in the same order."""
    from pocketlearn.data.hapt import load_sessions, session_windows

    return np.concatenate([np.full(len(session_windows(signals, labels, window, step)[1]), i)
                           for i, (_user, signals, labels) in enumerate(load_sessions())])


def _first_part(idx: np.ndarray, bouts: np.ndarray, fraction: float, by: str) -> tuple[np.ndarray, np.ndarray]:
    groups = [idx] if by == "user" else [idx[bouts[idx] == b] for b in np.unique(bouts[idx])]
    cuts = [int(round(len(g) * fraction)) for g in groups]
    return (np.concatenate([g[:c] for g, c in zip(groups, cuts, strict=True)]),
            np.concatenate([g[c:] for g, c in zip(groups, cuts, strict=True)]))


def split_users(pretrain_users: tuple[int, ...], users: tuple[int, ...], *, adapt_fraction: float = 0.5,
                by: Literal["bout", "user"] = "bout", window: int = 128, step: int = 64) -> HarSplit:
    """Pretraining windows, and each user's first ``adapt_fraction`` (of every bout, or of all) vs the rest.

    With no ``pretrain_users`` the windows keep the loader's standardisation (users 1-24, as the engine).
    """
    from pocketlearn.data.hapt import load_hapt_windows

    if not 0 < adapt_fraction < 1:
        raise ConfigError(f"adapt_fraction is the share of a user's windows to adapt on, in (0, 1), got "
                          f"{adapt_fraction}")
    _check_users(pretrain_users, users)
    if by not in ("bout", "user"):
        raise ConfigError(f"by should be 'bout' (first part of every activity bout) or 'user', got {by!r}")
    data = load_hapt_windows(window, step)
    sessions = window_sessions(window, step)
    bouts = sessions * 100 + data.y.numpy()  # (session, activity): one bout each in HAPT's protocol
    pre = torch.from_numpy(np.flatnonzero(np.isin(data.user, pretrain_users)))
    x = data.x  # no pretraining users: as loaded (standardised with users 1-24, as the federated engine does)
    if len(pre):  # affine on standardised data = standardising the raw data with the pretraining users' statistics
        x = (x - x[pre].mean((0, 2), keepdim=True)) / x[pre].std((0, 2), keepdim=True)
    out: dict[int, UserData] = {}
    for user in users:
        a, t = _first_part(np.flatnonzero(data.user == user), bouts, adapt_fraction, by)  # recording order
        ta, tt = torch.from_numpy(a), torch.from_numpy(t)
        out[user] = UserData(user, x[ta], data.y[ta], x[tt], data.y[tt], a, t)
    return HarSplit(tuple(pretrain_users), x[pre], data.y[pre], out, pre.numpy(), data.user, bouts)
