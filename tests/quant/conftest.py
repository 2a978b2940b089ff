import pytest
import torch


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tiny_gemma(softcap=None):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=128,
                              sliding_window=16, final_logit_softcapping=softcap)
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(params=["llama", "gemma"])
def tiny_lm(request):
    return tiny_llama() if request.param == "llama" else tiny_gemma()


def lm_batch(model, batch=2, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]
