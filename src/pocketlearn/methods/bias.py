"""Bias-only update (TinyTL's first idea, Cai et al., NeurIPS 2020).

Weights stay frozen, so autograd never saves a weight layer's input for its weight gradient; only
biases (and, by default, the output layer, which a new task needs) train.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from pocketlearn.methods.base import GradientConfig, GradientMethod, MethodConfig, freeze, head_module


@dataclass(frozen=True)
class BiasConfig(GradientConfig):
    train_head: bool = True  # also train the output layer (a new label set needs it)


class BiasOnly(GradientMethod):
    name = "bias"
    config: BiasConfig
    config_cls: ClassVar[type[MethodConfig]] = BiasConfig

    def select_trainable(self, model: nn.Module) -> nn.Module:
        freeze(model)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
        if self.config.train_head:
            train_head(model)
        return model


def train_head(model: nn.Module) -> None:
    """Unfreeze the output layer, unless it is tied to the input embeddings (an LM's 28M-row table)."""
    head = head_module(model)
    if head is None:
        return
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and head[1].weight is getattr(embeddings, "weight", None):
        return
    for p in head[1].parameters():
        p.requires_grad_(True)
