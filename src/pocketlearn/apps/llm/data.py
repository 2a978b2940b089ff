"""One Shakespeare role as one user's private text, tokenized for a pretrained LM.

A user is named ``"<play>/<role>"`` (``"Hamlet/HAMLET"``). Their last lines are held out, as LEAF does for
this data (:func:`pocketlearn.data.shakespeare.split_user_lines`): on a device the model is judged on what the
user writes next, and neighbouring lines are too alike for a random split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from pocketlearn.data.shakespeare import Role, lm_windows, load_roles, split_user_lines
from pocketlearn.errors import ConfigError, DataError


class Tokenizer(Protocol):
    """What the app needs of a tokenizer: text to ids and back (a transformers tokenizer has both)."""

    def __call__(self, text: str) -> Mapping[str, Any]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class UserData:
    """A user's text as next-token windows: train on ``x``/``y``, judge on the held-out ``x_test``/``y_test``."""

    name: str
    x: Tensor  # (N, T) token ids
    y: Tensor  # (N, T) the next token of each
    x_test: Tensor  # (M, T) windows of the held-out (last) lines
    y_test: Tensor
    held_out_lines: tuple[str, ...]


def user_name(role: Role) -> str:
    return f"{role.play}/{role.speaker}"


def find_user(name: str, *, min_lines: int = 50) -> Role:
    """The role named ``"<play>/<role>"``; an unknown (or too short) one lists the largest valid users."""
    play, sep, speaker = name.rpartition("/")
    roles = load_roles()
    match = [r for r in roles if sep and r.play.lower() == play.strip().lower()
             and r.speaker.lower() == speaker.strip().lower()]
    if match and len(match[0].lines) >= min_lines:
        return match[0]
    largest = sorted(roles, key=lambda r: (-r.num_chars, r.play, r.speaker))[:8]
    why = (f"has {len(match[0].lines)} lines, fewer than the {min_lines} a held-out split needs" if match
           else "is not a known user" if sep else "is not written as '<play>/<role>'")
    raise DataError(f"user {name!r} {why}; users are '<play>/<role>', e.g. "
                    + ", ".join(repr(user_name(r)) for r in largest))


def largest_users(n: int, *, min_lines: int = 50) -> list[Role]:
    """The ``n`` roles with the most text (ties broken by name, so the choice is stable)."""
    roles = [r for r in load_roles() if len(r.lines) >= min_lines]
    if not 1 <= n <= len(roles):
        raise ConfigError(f"asked for {n} users; {len(roles)} roles have at least {min_lines} lines")
    return sorted(roles, key=lambda r: (-r.num_chars, r.play, r.speaker))[:n]


def encode_lines(tokenizer: Tokenizer, lines: Sequence[str]) -> Tensor:
    """Token ids (L,) of the lines joined by newlines, ending with one."""
    return torch.tensor(list(tokenizer("\n".join(lines) + "\n")["input_ids"]), dtype=torch.long)


def token_windows(tokenizer: Tokenizer, lines: Sequence[str], seq_len: int) -> tuple[Tensor, Tensor]:
    """Next-token windows (n, T) of the lines; each starts with the start-of-text token if the tokenizer uses one.

    A model whose tokenizer begins every text with it (Gemma) was pretrained on nothing else: a window cut from
    the middle of a stream without it reads as garbage to the model (Gemma-3-270M's held-out perplexity on
    Hamlet is ~5x higher). So each window is its own text: the token, then T - 1 tokens, and every token of
    the stream is a target exactly once.
    """
    ids = encode_lines(tokenizer, lines)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or len(ids) == 0 or int(ids[0]) != bos:
        return lm_windows(ids, seq_len)
    stream = ids[1:]
    n = len(stream) // seq_len
    if n == 0:
        return lm_windows(stream, seq_len)  # its error names the shortfall
    targets = stream[: n * seq_len].view(n, seq_len)
    return torch.cat([torch.full((n, 1), bos), targets[:, :-1]], dim=1), targets


def tokenize_user(role: Role, tokenizer: Tokenizer, *, seq_len: int = 64, test_fraction: float = 0.2,
                  max_train_windows: int | None = None, max_test_windows: int | None = 32) -> UserData:
    """Cut the user's train and held-out lines into windows of ``seq_len`` tokens.

    ``max_*_windows`` keep that many windows spread evenly over the text (a short run still sees all of it).
    """
    train, held_out = split_user_lines(role, test_fraction)
    x, y = token_windows(tokenizer, train, seq_len)
    xt, yt = token_windows(tokenizer, held_out, seq_len)
    x, y = _spread(x, y, max_train_windows)
    xt, yt = _spread(xt, yt, max_test_windows)
    return UserData(user_name(role), x, y, xt, yt, tuple(held_out))


def _spread(x: Tensor, y: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
    if limit is None or len(x) <= limit:
        return x, y
    keep = torch.from_numpy(np.linspace(0, len(x) - 1, limit).round().astype(np.int64))
    return x[keep], y[keep]
