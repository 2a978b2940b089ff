import pytest
import torch

from pocketlearn import evaluate as ev
from pocketlearn.models.tiny_gpt import GPTConfig, TinyGPT


def test_a_language_models_logits_are_bounded_and_the_figures_unchanged(monkeypatch):
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_embd=16))
    x, y = torch.randint(0, 50, (40, 8)), torch.randint(0, 50, (40, 8))
    y[:, :2] = -100
    whole = ev.evaluate(model, [(x, y)])
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda inputs: seen.append(len(inputs)) or forward(inputs))
    monkeypatch.setattr(ev, "LOGITS_AT_ONCE", 7 * 8 * 50)  # seven sequences' logits at a time
    bounded = ev.evaluate(model, [(x, y)])
    assert seen == [1] + [7] * 5 + [5]  # one sequence to size the logits, then pieces of at most seven
    assert bounded.keys() == whole.keys()
    assert bounded == pytest.approx(whole, rel=1e-6)
