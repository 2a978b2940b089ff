"""Word-level next-word prediction data: public pretraining text, and Shakespeare users' lines as word ids.

The vocabulary comes from the public pretraining corpus (fortunes), never from users' data: it ships with the
model. Words outside it map to ``<unk>``, which is never a prediction target (a keyboard should not suggest
"unknown"), so accuracy and perplexity are over in-vocabulary words.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pocketlearn.errors import ConfigError

UNK, EOS = "<unk>", "<eos>"
IGNORE = -100  # target ids the loss and the metrics skip
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.,!?;:]")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]  # id -> token; 0 is <unk>, 1 is <eos>

    @classmethod
    def build(cls, texts: Iterable[str], size: int) -> Vocabulary:
        """The ``size - 2`` most frequent words (ties broken alphabetically) plus <unk> and <eos>."""
        if size < 3:
            raise ConfigError(f"vocabulary size must be at least 3, got {size}")
        counts = Counter(w for t in texts for w in words(t))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: size - 2]
        return cls((UNK, EOS, *ranked))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, lines: Sequence[str]) -> Tensor:
        """One id stream for ``lines``, each line followed by <eos>."""
        ids: list[int] = []
        lookup = self._ids  # type: ignore[attr-defined]
        for line in lines:
            ids.extend(lookup.get(w, 0) for w in words(line))
            ids.append(1)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens[i] for i in ids)

    def id(self, token: str) -> int:
        return self._ids.get(token, 0)  # type: ignore[attr-defined]


def windows(stream: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping (input, next-word target) windows; <unk> targets are ignored, a short tail is padded."""
    if len(stream) < 2:
        return torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, seq_len, dtype=torch.long)
    n = -(-(len(stream) - 1) // seq_len)
    x = torch.zeros(n * seq_len, dtype=torch.long)
    y = torch.full((n * seq_len,), IGNORE, dtype=torch.long)
    x[: len(stream) - 1], y[: len(stream) - 1] = stream[:-1], stream[1:]
    y[y == 0] = IGNORE
    return x.view(n, seq_len), y.view(n, seq_len)


VOCAB_SIZE = 10_000
SEQ_LEN = 24  # words per training window


@functools.cache
def public_vocabulary(size: int = VOCAB_SIZE) -> Vocabulary:
    from pocketlearn.data.fortunes import load_fortunes

    return Vocabulary.build(load_fortunes(), size)


def public_windows(vocab: Vocabulary, seq_len: int = SEQ_LEN) -> tuple[Tensor, Tensor]:
    """The pretraining corpus as next-word windows (each fortune one line)."""
    from pocketlearn.data.fortunes import load_fortunes

    return windows(vocab.encode(load_fortunes()), seq_len)


@dataclass
class WordUsers:
    """Users' training windows (client ``k`` holds rows ``indices[k]``) and their held-out lines' windows."""

    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    indices: list[Tensor]
    names: list[str]
    test_indices: list[Tensor]  # each user's rows of x_test, for per-user metrics


def shakespeare_word_users(num_users: int | None = None, *, vocab: Vocabulary | None = None,
                           seq_len: int = SEQ_LEN, min_chars: int = 2000, seed: int = 0) -> WordUsers:
    """One user per (play, role) with at least ``min_chars`` of lines; the last 20% of each user's lines held out.

    ``num_users`` roles are drawn at random (seeded) from all the plays, so users differ in style and vocabulary.
    """
    from pocketlearn.data.shakespeare import load_roles, split_user_lines

    vocab = vocab or public_vocabulary()
    roles = load_roles(min_chars=min_chars)
    if num_users is not None:
        if num_users > len(roles):
            raise ConfigError(f"only {len(roles)} Shakespeare roles have >= {min_chars} characters; ask for at most "
                              f"that many users (or lower min_chars)")
        pick = torch.randperm(len(roles), generator=torch.Generator().manual_seed(seed))[:num_users]
        roles = [roles[i] for i in sorted(pick.tolist())]
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    xts: list[Tensor] = []
    yts: list[Tensor] = []
    indices, test_indices = [], []
    start = start_t = 0
    for role in roles:
        train, test = split_user_lines(role)
        x, y = windows(vocab.encode(train), seq_len)
        xt, yt = windows(vocab.encode(test), seq_len)
        xs.append(x)
        ys.append(y)
        xts.append(xt)
        yts.append(yt)
        indices.append(torch.arange(start, start + len(x)))
        test_indices.append(torch.arange(start_t, start_t + len(xt)))
        start, start_t = start + len(x), start_t + len(xt)
    return WordUsers(torch.cat(xs), torch.cat(ys), torch.cat(xts), torch.cat(yts), indices,
                     [f"{r.play}/{r.speaker}" for r in roles], test_indices)
