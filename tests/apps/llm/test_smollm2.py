"""The app on the real SmolLM2-135M (slow: loads the model, trains a few steps)."""

import pytest

from pocketlearn.apps.llm import FinetuneConfig, SamplingConfig, find_user, finetune, generate, tokenize_user

pytestmark = pytest.mark.slow


def test_lora_on_hamlet_lowers_held_out_perplexity_within_a_phone_budget():
    from pocketlearn.models.pretrained import load_smollm2

    model, tokenizer = load_smollm2()
    data = tokenize_user(find_user("Hamlet/HAMLET"), tokenizer, seq_len=64, max_test_windows=8)
    prompt = "To be, or not to be"
    before = [generate(model, tokenizer, prompt, SamplingConfig(max_new_tokens=8)) for _ in range(2)]
    method, report = finetune(model, data, FinetuneConfig("lora", steps=8, device="phone-4g", measure_memory=False),
                              factory="smollm2-135m")
    assert before[0] == before[1]
    assert report.perplexity_after < report.perplexity_before
    assert report.memory is not None and report.memory.peak_bytes <= report.memory.budget_bytes
    assert isinstance(generate(method.model, tokenizer, prompt, SamplingConfig(max_new_tokens=8)), str)
