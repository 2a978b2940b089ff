"""Checkpoints carry a digest: any damage is named "corrupt" before a byte is unpickled."""

import io

import pytest
import torch

from pocketlearn.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_format,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from pocketlearn.models import mlp


def _state() -> dict:
    torch.manual_seed(0)
    return {"model": mlp(8, (4,), 3).state_dict(), "step": 7}


def _weight_offset(data: bytes, tensor: torch.Tensor) -> int:
    """Where ``tensor``'s bytes sit in a checkpoint file (torch.save stores them verbatim)."""
    raw = tensor.numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) == -1
    return at


def test_round_trip_keeps_every_value(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _state())
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["step"] == 7 and state["format_version"] == FORMAT_VERSION
    for name, t in _state()["model"].items():
        assert torch.equal(state["model"][name], t)
    assert checkpoint_format(tmp_path / "c.pt") == FORMAT_VERSION


def test_torch_load_still_opens_the_file_for_inspection(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _state())
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 7


def test_one_flipped_bit_in_a_weight_is_corrupt_not_loaded(tmp_path):
    path = tmp_path / "c.pt"
    state = _state()
    save_checkpoint(path, state)
    data = bytearray(path.read_bytes())
    data[_weight_offset(bytes(data), state["model"]["1.weight"]) + 5] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.pt is corrupt: .*sha256.*restore it from a backup, or delete it"):
        load_checkpoint(path)
    model = mlp(8, (4,), 3)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(model, path)


@pytest.mark.parametrize("cut", [1, 30, 52, 200])
def test_a_truncated_file_is_corrupt_or_truncated(tmp_path, cut):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_appended_bytes_are_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"x" * 16 + data[100:])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_every_single_byte_change_is_refused(tmp_path):
    """No position in the file can change without an error (payload, trailer, digest alike)."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(4.0)})
    good = path.read_bytes()
    for i in range(0, len(good), max(1, len(good) // 300)):
        bad = bytearray(good)
        bad[i] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_an_old_format_file_is_a_clear_error(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "model": _state()["model"]}, path)  # how format 1 wrote checkpoints
    assert checkpoint_format(path) == 1
    with pytest.raises(CheckpointError, match=r"format version 1 \(an older pocketlearn.*reads format 2.*Delete it"):
        load_checkpoint(path)


def test_the_caller_names_the_way_out(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="state.pt is corrupt or truncated.*restarts the run"):
        load_checkpoint(path, remedy="deleting it restarts the run")


def test_a_missing_file_stays_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def test_a_digest_matching_non_dict_payload_is_refused(tmp_path):
    """A valid wrapper around something that is not a checkpoint dict: format error, not a crash."""
    import hashlib
    import struct

    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    payload = buffer.getvalue()
    trailer = struct.pack("<8sIQ32s", b"PLCHKPT\x00", FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    (tmp_path / "c.pt").write_bytes(payload + trailer)
    with pytest.raises(CheckpointError, match="format version None"):
        load_checkpoint(tmp_path / "c.pt")


def test_weights_of_another_shape_are_named_not_dumped(tmp_path):
    from torch import nn

    from pocketlearn.checkpoint import CheckpointError, load_weights, save_checkpoint

    save_checkpoint(tmp_path / "w.pt", {"model": nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict()})
    with pytest.raises(CheckpointError) as err:
        load_weights(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)), tmp_path / "w.pt")
    message = str(err.value)
    assert "0.weight (3, 4) vs (5, 4)" in message and "model.init" in message
    with pytest.raises(CheckpointError, match="2 unexpected tensor"):
        load_weights(nn.Sequential(nn.Linear(4, 3)), tmp_path / "w.pt")
