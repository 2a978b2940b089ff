"""Full fine-tuning with backpropagation: every parameter trains (the reference the others are compared to)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pocketlearn.errors import ConfigError
from pocketlearn.methods.base import Batch, GradientConfig, GradientMethod, MethodConfig


@dataclass(frozen=True)
class BackpropConfig(GradientConfig):
    checkpointing: bool = False  # recompute activations in backward instead of storing them
    # "seen": embedding and output rows change only for the tokens in the batch (partial embedding updates: a
    # large-vocabulary model's update, and its upload, then hold only the words this device saw)
    embedding_rows: Literal["all", "seen"] = "all"

    def problems(self) -> list[str]:
        out = super().problems()
        if self.embedding_rows not in ("all", "seen"):
            out.append(f"embedding_rows should be 'all' or 'seen', got {self.embedding_rows!r}")
        if self.embedding_rows == "seen" and self.weight_decay:
            out.append("embedding_rows='seen' needs weight_decay=0 (decay would move every row)")
        return out


class _Checkpointed(nn.Module):
    """Runs a block under activation checkpointing: only its input is kept for backward."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return checkpoint(self.block, x, use_reentrant=False) if self.training else self.block(x)


class Backprop(GradientMethod):
    """Every parameter trains by backpropagation: the quality reference, and the most memory."""

    name = "backprop"
    config: BackpropConfig
    config_cls: ClassVar[type[MethodConfig]] = BackpropConfig
    wire_kind = "dense"
    quality_rank = 10
    exportable = True
    vectorizes = True

    @classmethod
    def vectorizes_with(cls, options: Mapping[str, object]) -> bool:
        """Checkpointing and sparse embedding rows change the step (SGD and AdamW both run batched)."""
        return cls.vectorizes and not options.get("checkpointing") and options.get("embedding_rows", "all") == "all"

    def select_trainable(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        if self.config.checkpointing:
            enable_checkpointing(model)
        self._vocab_tables = vocabulary_tables(model) if self.config.embedding_rows == "seen" else []
        return model

    def _update(self, batch: Batch) -> float:
        if not self._vocab_tables:
            return super()._update(batch)
        loss = self.backward(batch)
        seen = torch.zeros(self._vocab_tables[0].size(0), dtype=torch.bool)
        for ids in batch:
            seen[ids[(ids >= 0) & (ids < len(seen))]] = True
        for table in self._vocab_tables:
            if table.grad is not None:
                table.grad[~seen] = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def vocabulary_tables(model: nn.Module) -> list[Tensor]:
    """Parameters with one row per token: embeddings, and output layers (weight and bias) as wide as one."""
    sizes = {m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)}
    vocab = max(sizes, default=0)
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab]
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == vocab:
            tables += [m.weight] + ([m.bias] if m.bias is not None else [])
    if not tables:
        raise ConfigError("embedding_rows='seen' needs a model with an nn.Embedding vocabulary table")
    return tables


def enable_checkpointing(model: nn.Module) -> None:
    """Transformers models use their own switch; a plain Sequential checkpoints each child module."""
    # transformers >= 5.2 (the old name is deprecated there)
    for switch, options in (("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
                            ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs")):
        enable = getattr(model, switch, None)
        if callable(enable):
            enable(**{options: {"use_reentrant": False}})
            return
    containers: list[nn.ModuleList | nn.Sequential] = [m for m in model.modules() if isinstance(m, nn.ModuleList)] or (
        [model] if isinstance(model, nn.Sequential) else [])
    if not containers:
        raise ValueError("checkpointing needs an nn.Sequential model or an nn.ModuleList of blocks")
    for container in containers:
        for i, child in enumerate(list(container)):
            if any(True for _ in child.parameters()):
                container[i] = _Checkpointed(child)
