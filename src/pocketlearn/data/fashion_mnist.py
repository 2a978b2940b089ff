"""Fashion-MNIST (70,000 28x28 clothing images) from Debian's `dataset-fashion-mnist` IDX files.

Read with numpy alone, so no data hub and no torchvision is needed; the header is checked so that a
truncated or foreign file fails loudly instead of becoming garbage images.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pocketlearn.errors import ConfigError, DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "POCKETLEARN_FASHION_MNIST"
INSTALL = "sudo apt-get install dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Pixel mean/std of the 60,000 training images scaled to [0, 1]; pinned so that loading a test slice
# needs no pass over the training set (tests check them against the data).
TRAIN_MEAN = 0.2860406
TRAIN_STD = 0.3530242
_IMAGE_MAGIC, _LABEL_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim
_IMAGE_SIZE = 28


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """Pick the folder: the argument, else $POCKETLEARN_FASHION_MNIST, else Debian's install path."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def _missing_error(path: Path) -> DataError:
    return DataError(
        f"Fashion-MNIST file {path} not found. Install it with `{INSTALL}`, "
        f"or set {ROOT_ENV} (or pass root=) to a folder holding the four IDX .gz files."
    )


def _read_idx(path: Path, magic: int, limit: int | None) -> np.ndarray:
    """Read the first `limit` items of an IDX file (all when None), checking magic number and size."""
    if not path.is_file():
        raise _missing_error(path)
    ndim = magic & 0xFF
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim or struct.unpack(">I", header[:4])[0] != magic:
                raise DataError(f"{path} is not an IDX file with magic {magic:#010x}; reinstall `{INSTALL}`.")
            dims = struct.unpack(f">{ndim}I", header[4:])
            n = dims[0] if limit is None else min(limit, dims[0])
            item = int(np.prod(dims[1:], dtype=np.int64))
            body = f.read(n * item)
            if n == dims[0] and f.read(1):  # reading to the end also checks the gzip CRC
                raise DataError(f"{path} has data past the {n} items its header declares.")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path} is corrupt or truncated ({e}); reinstall: `{INSTALL}`.") from e
    if len(body) != n * item:
        raise DataError(f"{path} is truncated: expected {n * item} bytes of data, read {len(body)}.")
    return np.frombuffer(body, dtype=np.uint8).reshape(n, *dims[1:])


def load_fashion_mnist(
    split: str = "train", *, limit: int | None = None, root: str | Path | None = None, standardize: bool = True
) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 28, 28) float32 normalised with the train mean/std, and labels (N,) long.

    Without ``standardize`` the images are in [0, 1], as a pretrained network's own preprocessing expects.
    """
    if split not in FILES:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of images, got {limit}.")
    folder = fashion_mnist_root(root)
    image_file, label_file = (folder / name for name in FILES[split])
    images = _read_idx(image_file, _IMAGE_MAGIC, limit)
    labels = _read_idx(label_file, _LABEL_MAGIC, limit)
    if images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE) or len(images) != len(labels):
        raise DataError(
            f"{image_file} holds {images.shape} images but {label_file} {len(labels)} labels; "
            f"expected (N, 28, 28) and N. Reinstall: `{INSTALL}`."
        )
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{label_file} has label {labels.max()}, expected 0-9; reinstall: `{INSTALL}`.")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    if standardize:
        x.sub_(TRAIN_MEAN).div_(TRAIN_STD)
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))  # (N, 1, 28, 28), (N,)
