"""Pretraining "in the cloud": the keyboard model learns English from public text before any device sees it.

The result is cached by a digest of everything that determines it (vocabulary, architecture, settings), so
the demo pays for pretraining once; a killed pretraining run resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pocketlearn.checkpoint import FORMAT_VERSION, checkpoint_format
from pocketlearn.data.words import Vocabulary, public_vocabulary, public_windows
from pocketlearn.models import KEYBOARD_GPT, build_model
from pocketlearn.models.pretrained import cache_dir

MODEL = "keyboard-gpt"


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    limit: int | None = None  # first N windows only (tests)


def pretrained_path(config: PretrainConfig, vocab: Vocabulary) -> Path:
    key = json.dumps([asdict(config), asdict(KEYBOARD_GPT), vocab.tokens], sort_keys=True)
    return cache_dir() / "keyboard" / f"{MODEL}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def pretrain(config: PretrainConfig = PretrainConfig(), *,
             on_step: Callable[[int, int, float], None] | None = None) -> Path:
    """The cached pretrained weights' path, training them first if needed; ``on_step(step, total, loss)``."""
    from pocketlearn.methods import make_method
    from pocketlearn.trainer import LocalTrainer, TrainerConfig

    vocab = public_vocabulary()
    final = pretrained_path(config, vocab)
    if final.exists() and checkpoint_format(final) == FORMAT_VERSION:
        return final  # a cache of an older checkpoint format is rebuilt below (it has no digest)
    x, y = public_windows(vocab)
    if config.limit:
        x, y = x[: config.limit], y[: config.limit]
    torch.manual_seed(config.seed)
    method = make_method("backprop", build_model(MODEL), optimizer="adamw", lr=config.lr)
    partial = final.with_suffix(".partial.pt")
    if partial.exists() and checkpoint_format(partial) != FORMAT_VERSION:
        partial.unlink()  # an older format's half-done pretraining: start it again
    trainer = LocalTrainer(method, TrainerConfig(config.epochs, config.batch_size, config.seed, checkpoint_every=100),
                           checkpoint_path=partial)
    total = trainer.total_steps(len(x))
    trainer.fit(x, y, on_step=(lambda step, loss: on_step(step, total, loss)) if on_step else None)
    os.replace(partial, final)  # the finished checkpoint (it holds the "model" state dict) becomes the cache
    return final
