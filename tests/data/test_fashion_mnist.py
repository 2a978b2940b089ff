import gzip
import struct

import numpy as np
import pytest
import torch

from pocketlearn.data.fashion_mnist import (
    CLASS_NAMES,
    DEFAULT_ROOT,
    FILES,
    ROOT_ENV,
    TRAIN_MEAN,
    TRAIN_STD,
    load_fashion_mnist,
)
from pocketlearn.errors import ConfigError, DataError

installed = pytest.mark.skipif(
    not (DEFAULT_ROOT / FILES["test"][0]).is_file(), reason="needs Debian's dataset-fashion-mnist"
)


def _write_idx(path, magic, dims, data, truncate=0):
    raw = struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(data)
    with gzip.open(path, "wb") as f:
        f.write(raw[: len(raw) - truncate])


def _write_split(folder, n=3, truncate=0, image_magic=0x803):
    images, labels = FILES["test"]
    _write_idx(folder / images, image_magic, (n, 28, 28), np.full(n * 784, 255, np.uint8), truncate)
    _write_idx(folder / labels, 0x801, (n,), np.arange(n, dtype=np.uint8))


@installed
def test_train_slice_shapes_and_known_labels():
    x, y = load_fashion_mnist("train", limit=10)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.long
    assert y.tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first ten training labels
    assert CLASS_NAMES[int(y[0])] == "Ankle boot"


@installed
def test_test_split_is_balanced_and_normalised():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [1000] * 10
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


@installed
def test_pinned_train_statistics_match_the_data():
    x, _ = load_fashion_mnist("train")
    pixels = x * TRAIN_STD + TRAIN_MEAN  # back to [0, 1]
    assert pixels.mean().item() == pytest.approx(TRAIN_MEAN, abs=1e-5)
    assert pixels.std().item() == pytest.approx(TRAIN_STD, abs=1e-5)


def test_missing_files_name_the_install_command(tmp_path):
    with pytest.raises(DataError) as err:
        load_fashion_mnist("test", root=tmp_path)
    message = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert ROOT_ENV in message and str(tmp_path) in message


def test_env_var_sets_the_root(tmp_path, monkeypatch):
    _write_split(tmp_path)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    x, y = load_fashion_mnist("test")
    assert y.tolist() == [0, 1, 2]
    assert torch.allclose(x, torch.full_like(x, (1 - TRAIN_MEAN) / TRAIN_STD))


def test_truncated_file_is_named(tmp_path):
    _write_split(tmp_path, truncate=100)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_fashion_mnist("test", root=tmp_path)


def test_corrupt_gzip_is_named(tmp_path):
    _write_split(tmp_path)
    (tmp_path / FILES["test"][0]).write_bytes(b"\x1f\x8b\x08\x00garbage, not deflate data")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist("test", root=tmp_path)


def test_wrong_magic_is_named(tmp_path):
    _write_split(tmp_path, image_magic=0x801)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is not an IDX file"):
        load_fashion_mnist("test", root=tmp_path)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        load_fashion_mnist("val")
    with pytest.raises(ConfigError, match="limit"):
        load_fashion_mnist("test", limit=0)
