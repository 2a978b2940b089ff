import pytest
import torch

from pocketlearn.checkpoint import CheckpointError
from pocketlearn.methods.base import logits_of
from pocketlearn.quant import quantize_base
from pocketlearn.quant.store import load_quantized, save_quantized
from tests.quant.conftest import lm_batch


def test_a_saved_quantized_model_loads_memory_mapped_and_equal(tiny_lm, tmp_path):
    x, _ = lm_batch(tiny_lm)
    tiny_lm.requires_grad_(False)
    quantize_base(tiny_lm, "q4")
    with torch.no_grad():
        reference = logits_of(tiny_lm(x))
    save_quantized(tiny_lm, tmp_path / "m.pt", "q4")
    loaded = load_quantized(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(logits_of(loaded(x)), reference)
    assert not [n for n, t in loaded.state_dict().items() if t.is_meta]


def test_a_damaged_file_is_refused(tiny_lm, tmp_path):
    path = tmp_path / "m.pt"
    save_quantized(tiny_lm, path, "q8")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_quantized(path)
