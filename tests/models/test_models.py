import pytest
import torch

from pocketlearn.errors import ConfigError, DataError
from pocketlearn.models import MODELS, GPTConfig, TinyGPT, build_model, get_model_spec


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.load_base is None])  # not the pretrained LMs
def test_every_small_model_runs_its_example_batch(name):
    spec = get_model_spec(name)
    x, y = spec.example_batch(3)
    out = build_model(name)(x)
    assert out.shape[:-1] == y.shape and out.shape[-1] == spec.num_classes


def test_tiny_gpt_is_causal_and_checks_length():
    model = TinyGPT(GPTConfig(block_size=8))
    ids = torch.randint(0, 256, (2, 8))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 256
    torch.testing.assert_close(model(ids)[:, :-1], model(changed)[:, :-1])  # the future does not leak
    with pytest.raises(DataError, match="block size is only 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    assert model.generate(ids[:1, :2], 5).shape == (1, 7)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ConfigError, match="choose one of"):
        get_model_spec("gpt-5")


def test_smollm2_loads_offline_from_the_package():
    from pocketlearn.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("To be, or not to be", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits  # (1, T, 49152)
    assert logits.shape == (1, ids.size(1), 49152) and torch.isfinite(logits).all()
