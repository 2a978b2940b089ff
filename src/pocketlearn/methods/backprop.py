"""Full fine-tuning with backpropagation: every parameter trains (the reference the others are compared to)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pocketlearn.methods.base import GradientConfig, GradientMethod, MethodConfig


@dataclass(frozen=True)
class BackpropConfig(GradientConfig):
    checkpointing: bool = False  # recompute activations in backward instead of storing them


class _Checkpointed(nn.Module):
    """Runs a block under activation checkpointing: only its input is kept for backward."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return checkpoint(self.block, x, use_reentrant=False) if self.training else self.block(x)


class Backprop(GradientMethod):
    name = "backprop"
    config: BackpropConfig
    config_cls: ClassVar[type[MethodConfig]] = BackpropConfig

    def select_trainable(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        if self.config.checkpointing:
            enable_checkpointing(model)
        return model


def enable_checkpointing(model: nn.Module) -> None:
    """Transformers models use their own switch; a plain Sequential checkpoints each child module."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    containers = [m for m in model.modules() if isinstance(m, nn.ModuleList)] or (
        [model] if isinstance(model, nn.Sequential) else [])
    if not containers:
        raise ValueError("checkpointing needs an nn.Sequential model or an nn.ModuleList of blocks")
    for container in containers:
        for i, child in enumerate(list(container)):
            if any(True for _ in child.parameters()):
                container[i] = _Checkpointed(child)
