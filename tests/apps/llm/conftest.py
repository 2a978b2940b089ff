import pytest
import torch

from pocketlearn.apps.llm.data import UserData


class ByteTokenizer:
    """A stand-in for SmolLM2's tokenizer: UTF-8 bytes are the ids (vocabulary 256), no special tokens."""

    eos_token_id = None

    def __call__(self, text):
        return {"input_ids": list(text.encode("utf-8"))}

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def tiny_llama():
    """A random-init Llama with SmolLM2's layout (tied head, GQA), 2 blocks x 32 wide, 256-token vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.2)  # wide enough that LoRA on it can fit text
    return LlamaForCausalLM(config)


def windows(text, seq_len=16):
    ids = torch.tensor(list(text.encode("utf-8")))
    n = (len(ids) - 1) // seq_len
    return ids[: n * seq_len].view(n, seq_len), ids[1: n * seq_len + 1].view(n, seq_len)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and spins when the cores are busy)."""
    from pocketlearn.federated.simulate import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def tokenizer():
    return ByteTokenizer()


@pytest.fixture
def repetitive_user():
    """A user who always says the same thing: train on it, hold out more of it."""
    x, y = windows("to be or not to be, that is the question. " * 20)
    xt, yt = windows("to be or not to be, that is the question. " * 5)
    return UserData("Test/USER", x, y, xt, yt, ("to be or not to be",))
