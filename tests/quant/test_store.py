import copy

import pytest
import torch

from pocketlearn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pocketlearn.errors import DataError
from pocketlearn.methods.base import logits_of
from pocketlearn.quant import QuantEmbedding, QuantLinear, quantize_base, quantized_bits
from pocketlearn.quant.store import cached_quantized, load_quantized, save_quantized
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


def test_layers_the_model_file_stores_wider_keep_their_width_under_a_4_bit_base(tiny_lm, tmp_path):
    x, _ = lm_batch(tiny_lm)
    widths = {"model.embed_tokens": 8, "model.layers.0.self_attn.v_proj": 5}
    save_quantized(tiny_lm, tmp_path / "m.pt", "q4", widths=widths)
    loaded = load_quantized(tmp_path / "m.pt")
    bits = {n: m.matrix.bits for n, m in loaded.named_modules() if isinstance(m, QuantLinear | QuantEmbedding)}
    assert (bits.pop("model.embed_tokens"), bits.pop("model.layers.0.self_attn.v_proj")) == (8, 5)
    assert set(bits.values()) == {4} and quantized_bits(loaded) == 4
    assert loaded.lm_head.table.matrix.bits == 8  # the tied head reads the 8-bit table
    with torch.no_grad():
        assert torch.equal(logits_of(loaded(x)), logits_of(tiny_lm(x)))


def test_a_cached_model_of_an_older_store_version_is_rebuilt(tiny_lm, tmp_path):
    path, said, fresh = tmp_path / "m.pt", [], copy.deepcopy(tiny_lm)
    save_quantized(tiny_lm, path, "q4")
    save_checkpoint(path, load_checkpoint(path) | {"store_version": 1})
    with pytest.raises(DataError, match="store version 1"):
        load_quantized(path)
    loaded = cached_quantized(path, "q4", lambda: fresh, widths=lambda: {"model.embed_tokens": 8}, say=said.append)
    assert "older pocketlearn: rebuilding" in said[0] and loaded.model.embed_tokens.matrix.bits == 8
