import torch

from pocketlearn.data.words import EOS, IGNORE, UNK, Vocabulary, public_vocabulary, shakespeare_word_users, windows


def test_vocabulary_is_built_from_public_text_only_and_unknown_words_are_not_targets():
    vocab = Vocabulary.build(["the cat sat.", "the dog sat!"], size=6)
    assert vocab.tokens[:2] == (UNK, EOS) and len(vocab) == 6
    ids = vocab.encode(["The zebra sat."])
    assert vocab.decode(ids.tolist()) == f"the {UNK} sat . {EOS}"
    x, y = windows(ids, seq_len=3)
    assert x.shape == (2, 3) and (y == IGNORE).any()  # "zebra" is never a target, the tail is padded
    assert y[0, 0] == IGNORE and x[0, 1] == 0


def test_the_public_vocabulary_is_large_and_covers_most_of_shakespeare():
    vocab = public_vocabulary()
    assert len(vocab) == 10_000
    users = shakespeare_word_users(5)
    assert len(users.indices) == len(users.names) == 5
    known = (users.x != 0).float().mean().item()
    assert known > 0.85
    rows = torch.cat(users.indices)
    assert torch.equal(rows, torch.arange(len(users.x)))  # every window belongs to exactly one user
    assert sum(len(i) for i in users.test_indices) == len(users.x_test) > 0
