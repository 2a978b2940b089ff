import pytest
import torch

from pocketlearn.checkpoint import CheckpointError
from pocketlearn.data.files import load_examples, save_examples
from pocketlearn.errors import DataError


def test_examples_round_trip(tmp_path):
    x, y = torch.randn(5, 3), torch.arange(5)
    save_examples(tmp_path / "d.pt", x, y, client_id=7, dataset="digits")
    x2, y2, meta = load_examples(tmp_path / "d.pt")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert meta == {"client_id": 7, "dataset": "digits"}


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="one label per example"):
        save_examples(tmp_path / "d.pt", torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(DataError, match="no data file"):
        load_examples(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_examples(tmp_path / "junk.pt")
