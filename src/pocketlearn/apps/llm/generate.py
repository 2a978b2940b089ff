"""Deterministic completions: greedy, or sampled from a seeded generator of its own.

The global torch RNG is never touched, so the same (model, prompt, config) always gives the same text,
before and after fine-tuning alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pocketlearn.apps.llm.data import Tokenizer
from pocketlearn.errors import ConfigError, Validated
from pocketlearn.methods.base import logits_of


@dataclass(frozen=True)
class SamplingConfig(Validated):
    max_new_tokens: int = 40
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
    top_k: int = 50  # sample among the k likeliest tokens only
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens should be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            out.append(f"temperature should be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 1:
            out.append(f"top_k should be >= 1, got {self.top_k}")
        return out


def next_token(logits: Tensor, config: SamplingConfig, generator: torch.Generator) -> int:
    """Pick the next token from the last position's logits (V,)."""
    if config.temperature == 0:
        return int(logits.argmax())
    top = logits.topk(min(config.top_k, logits.numel()))
    probs = torch.softmax(top.values / config.temperature, dim=-1)
    return int(top.indices[torch.multinomial(probs, 1, generator=generator)])


def last_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The next-token logits after ``ids`` (1, T); a transformers LM computes the last position's only."""
    kwargs = {"logits_to_keep": 1} if hasattr(model, "config") else {}  # Gemma: 262k words per position
    return logits_of(model(ids, **kwargs))[0, -1]


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Tokenizer, prompt: str, config: SamplingConfig | None = None) -> str:
    """The completion of ``prompt`` (without the prompt), stopping early at the tokenizer's end token."""
    config = config or SamplingConfig()
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise ConfigError("the prompt is empty after tokenization; give some text to complete")
    eos = getattr(tokenizer, "eos_token_id", None)
    generator = torch.Generator().manual_seed(config.seed)
    was_training = model.training
    model.eval()
    out: list[int] = []
    try:
        for _ in range(config.max_new_tokens):  # no KV cache: a 40-token completion is cheap, and any model works
            logits = last_logits(model, torch.tensor([ids + out]))
            token = next_token(logits.float(), config, generator)
            if token == eos:
                break
            out.append(token)
    finally:
        model.train(was_training)
    return tokenizer.decode(out, skip_special_tokens=True)
