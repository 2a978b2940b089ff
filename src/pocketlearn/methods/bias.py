"""Bias-only update (TinyTL's first idea, Cai et al., NeurIPS 2020), and its neighbours in TinyTL's comparison.

Weights stay frozen, so autograd never saves a weight layer's input for its weight gradient; only
biases (and, by default, the output layer, which a new task needs) train. Its options give the other
classic transfer baselines: the last layer alone (``train_biases=false``), and batch norm plus the last
layer (``train_norms=true``: the norms' scales too, whose gradients need their inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from pocketlearn.errors import UnsupportedModelError
from pocketlearn.methods.base import GradientConfig, GradientMethod, MethodConfig, freeze, train_biases, untied_head
from pocketlearn.methods.lean import make_lean


@dataclass(frozen=True)
class BiasConfig(GradientConfig):
    train_head: bool = True  # also train the output layer (a new label set needs it)
    train_biases: bool = True  # false: the last layer alone ("last layer only")
    train_norms: bool = False  # also the normalization layers' scales ("batch norm + last layer")


class BiasOnly(GradientMethod):
    """Only biases (and the output layer) train: a bias gradient needs no stored input (TinyTL's bias-only)."""

    name = "bias"
    config: BiasConfig
    config_cls: ClassVar[type[MethodConfig]] = BiasConfig
    wire_kind = "dense"
    quality_rank = 50
    exportable = True

    def select_trainable(self, model: nn.Module) -> nn.Module:
        freeze(model)
        c = self.config
        if c.train_biases:
            train_biases(model)
        if c.train_norms:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
                    m.requires_grad_(True)
        if c.train_head:
            train_head(model)
        if not any(p.requires_grad for p in model.parameters()):
            raise UnsupportedModelError("bias: nothing to train with these options: this model has no bias "
                                        "parameters, norms or separate output layer (Llama-family LMs have "
                                        "neither of the first and last); use lora or sparse")
        make_lean(model)
        return model


def train_head(model: nn.Module) -> None:
    """Unfreeze the output layer, unless it is tied to the input embeddings."""
    head = untied_head(model)
    if head is not None:
        head[1].requires_grad_(True)
