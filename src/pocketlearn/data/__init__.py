"""Data sets that ship inside packages, as train/test tensors by name."""

from __future__ import annotations

from torch import Tensor

from pocketlearn.errors import ConfigError

Split = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test
DATASETS = ("digits", "fashion-mnist", "shakespeare", "hapt")


def load_tensors(name: str, *, seq_len: int = 64, limit: int | None = None, unit_pixels: bool = False) -> Split:
    """Train and test tensors of a named data set (Shakespeare: next-character windows of ``seq_len``).

    ``limit``: at most this many training (and test) examples, for quick runs. ``unit_pixels``: images in
    [0, 1] instead of standardized (what a pretrained vision model's own preprocessing expects).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit {limit}: use at least 1 example (or no limit for the whole data set)")
    if name == "digits":
        from pocketlearn.data.digits import load_digits_tensors

        return _first(load_digits_tensors(), limit)
    if name == "fashion-mnist":
        from pocketlearn.data.fashion_mnist import load_fashion_mnist

        x, y = load_fashion_mnist("train", limit=limit, standardize=not unit_pixels)
        xt, yt = load_fashion_mnist("test", limit=limit, standardize=not unit_pixels)
        return x, y, xt, yt
    if name == "shakespeare":
        import torch

        from pocketlearn.data.shakespeare import encode_chars, lm_windows, load_roles, split_user_lines

        splits = [split_user_lines(r) for r in load_roles(min_chars=2000)]
        x, y = lm_windows(encode_chars("\n".join(line for s in splits for line in s[0])), seq_len)
        xt, yt = lm_windows(encode_chars("\n".join(line for s in splits for line in s[1])), seq_len)
        if limit:
            g = torch.Generator().manual_seed(0)
            keep, keep_t = torch.randperm(len(x), generator=g)[:limit], torch.randperm(len(xt), generator=g)[:limit]
            x, y, xt, yt = x[keep], y[keep], xt[keep_t], yt[keep_t]
        return x, y, xt, yt
    if name == "hapt":
        from pocketlearn.data.hapt import federated_hapt

        fed = federated_hapt()  # users 1-24 train, 25-30 test
        return _first((fed.x, fed.y, fed.x_test, fed.y_test), limit)
    raise ConfigError(f"unknown data set {name!r}; choose one of {list(DATASETS)}")


def _first(split: Split, limit: int | None) -> Split:
    """The first ``limit`` training and test examples (all without a limit), as Fashion-MNIST's reader keeps."""
    x, y, xt, yt = split
    return (x, y, xt, yt) if limit is None else (x[:limit], y[:limit], xt[:limit], yt[:limit])
