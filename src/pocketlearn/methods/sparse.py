"""Sparse (partial) update: the weights of the last blocks train, optionally only some of their channels.

Backward stops early: frozen blocks need no stored inputs for weight gradients, biases need none at all,
and a channel slice keeps gradients and optimizer state for that slice only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pocketlearn.errors import ConfigError
from pocketlearn.methods.base import (
    GradientConfig,
    GradientMethod,
    MethodConfig,
    freeze,
    train_biases,
    untied_head,
    weight_layers,
)
from pocketlearn.methods.lean import make_lean

Blocks = list[tuple[str, nn.Module]]
WeightLayer = nn.Linear | nn.Conv1d | nn.Conv2d


@dataclass(frozen=True)
class SparseConfig(GradientConfig):
    last_k: int = 2  # train the weights of the last k blocks (the head counts as one)
    train_biases: bool = True  # also train every bias (cheap: a bias gradient needs no stored input)
    max_trainable: int | None = None  # instead of last_k: the most blocks from the end that fit this many params
    channel_fraction: float = 1.0  # in those blocks' weight layers (not the head), train this share of rows

    def problems(self) -> list[str]:
        out = super().problems()
        if self.last_k < 1:
            out.append(f"`last_k` should be >= 1, got {self.last_k}")
        if self.max_trainable is not None and self.max_trainable < 1:
            out.append(f"`max_trainable` should be >= 1 or None, got {self.max_trainable}")
        if not 0.0 < self.channel_fraction <= 1.0:
            out.append(f"`channel_fraction` should be in (0, 1], got {self.channel_fraction}")
        return out


class _FirstRows:
    """Mixin for a Linear/Conv layer whose first output rows alone train.

    ``weight_head`` (a Parameter) and ``weight_tail`` (a buffer) are applied separately, so autograd never
    keeps a full-size weight copy.
    """

    weight_head: nn.Parameter  # (rows, ...)
    weight_tail: Tensor  # (out - rows, ...)
    bias: Tensor | None
    channel_dim: ClassVar[int]  # of the layer's output

    @property
    def weight(self) -> Tensor:
        """The whole weight, for reading; forward never builds it."""
        return torch.cat([self.weight_head, self.weight_tail])

    def rows_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        k, b = self.weight_head.size(0), self.bias
        head = self.rows_forward(x, self.weight_head, None if b is None else b[:k])  # (..., rows, ...)
        tail = self.rows_forward(x, self.weight_tail, None if b is None else b[k:])  # (..., out - rows, ...)
        return torch.cat([head, tail], dim=self.channel_dim)


class _FirstRowsLinear(_FirstRows, nn.Linear):  # type: ignore[misc, override]
    channel_dim = -1

    def rows_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


class _FirstRowsConv1d(_FirstRows, nn.Conv1d):  # type: ignore[misc, override]
    channel_dim = -2  # (B, C, L) or (C, L)

    def rows_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)


class _FirstRowsConv2d(_FirstRows, nn.Conv2d):  # type: ignore[misc, override]
    channel_dim = -3  # (B, C, H, W) or (C, H, W)

    def rows_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)


_FIRST_ROWS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: _FirstRowsLinear, nn.Conv1d: _FirstRowsConv1d, nn.Conv2d: _FirstRowsConv2d}


class SparseUpdate(GradientMethod):
    """Train the last blocks' weights (or a channel slice of them) plus every bias.

    Lin et al., "On-Device Training Under 256KB Memory", NeurIPS 2022; Zhu et al., "PockEngine: Sparse and
    Efficient Fine-tuning in a Pocket", MICRO 2023. Blocks are a ModuleList's entries (plus an untied
    head), a Sequential's children with parameters, or else leaf modules with parameters; modules outside
    the blocks (embeddings, a final norm) train only their biases. With ``channel_fraction`` < 1 a sliced
    layer's trainable rows are ``<layer>.weight_head``; the head and grouped convs stay whole.
    """

    name = "sparse"
    config: SparseConfig
    config_cls: ClassVar[type[MethodConfig]] = SparseConfig
    wire_kind = "dense"
    quality_rank = 30
    exportable = True

    @classmethod
    def plain_state(cls, model: nn.Module) -> dict[str, Tensor]:
        out = super().plain_state(model)
        for head in [k for k in out if k.endswith(".weight_head")]:  # the sliced layers' rows joined again
            layer = head.removesuffix("weight_head")
            out[layer + "weight"] = torch.cat([out.pop(head), out.pop(layer + "weight_tail")])
        return out

    def select_trainable(self, model: nn.Module) -> nn.Module:
        freeze(model)
        head = untied_head(model)
        chosen = self._choose(model, model_blocks(model), head)
        for _, block in chosen:
            block.requires_grad_(True)
        if self.config.train_biases:
            train_biases(model)
        for layer, rows in _sliced_layers(chosen, head, self.config.channel_fraction):
            train_first_rows(layer, rows)
        make_lean(model)  # frozen convs whose bias trains keep no input for backward
        return model

    def _choose(self, model: nn.Module, blocks: Blocks, head: tuple[str, nn.Module] | None) -> Blocks:
        """The last ``last_k`` blocks, or the longest suffix within ``max_trainable`` parameters."""
        budget = self.config.max_trainable
        if budget is None:
            if self.config.last_k > len(blocks):
                names = ", ".join(n for n, _ in blocks)
                raise ConfigError(f"`last_k` is {self.config.last_k} but this model has {len(blocks)} blocks "
                                  f"({names}); lower it")
            return blocks[-self.config.last_k:]
        for k in range(len(blocks), 0, -1):
            if self._count(model, blocks[-k:], head) <= budget:
                return blocks[-k:]
        need = self._count(model, blocks[-1:], head)
        raise ConfigError(f"`max_trainable` is {budget} but training even the last block ({blocks[-1][0]}) "
                          f"takes {need} parameters; raise it, or use `bias`")

    def _count(self, model: nn.Module, chosen: Blocks, head: tuple[str, nn.Module] | None) -> int:
        """Parameters that would train with ``chosen``: its blocks (rows sliced) plus biases elsewhere."""
        in_blocks = {id(p) for _, b in chosen for p in b.parameters()}
        total = sum(p.numel() for _, b in chosen for p in b.parameters())
        for layer, rows in _sliced_layers(chosen, head, self.config.channel_fraction):
            total -= (layer.weight.size(0) - rows) * layer.weight[0].numel()
        if self.config.train_biases:
            total += sum(p.numel() for n, p in model.named_parameters()
                         if n.endswith("bias") and id(p) not in in_blocks)
        return total


def model_blocks(model: nn.Module) -> Blocks:
    """A ModuleList's entries (+ the untied head), a Sequential's children, or leaf modules with parameters."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and _size(m) > 0]
    if lists:
        name, blocks = max(lists, key=lambda nm: _size(nm[1]))  # the outer list of layers, not a nested one
        out = [(f"{name}.{i}", b) for i, b in enumerate(blocks) if _size(b) > 0]
        head = untied_head(model)
        if head is not None and not any(head[1] is m for _, b in out for m in b.modules()):
            out.append(head)
        return out
    if isinstance(model, nn.Sequential):
        return [(n, m) for n, m in model.named_children() if _size(m) > 0]
    return [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def train_first_rows(layer: WeightLayer, rows: int) -> None:
    """Make only the first ``rows`` output channels of ``layer.weight`` a trainable Parameter.

    The weight becomes ``weight_head`` (trainable, the first rows) and ``weight_tail`` (a buffer).
    """
    weight = layer.weight.detach()
    delattr(layer, "weight")
    layer.register_parameter("weight_head", nn.Parameter(weight[:rows].clone()))  # own storage, not a view
    layer.register_buffer("weight_tail", weight[rows:].clone())
    layer.__class__ = _FIRST_ROWS[type(layer)]  # type: ignore[assignment]


def _sliced_layers(chosen: Blocks, head: tuple[str, nn.Module] | None, fraction: float
                   ) -> list[tuple[WeightLayer, int]]:
    """(layer, trainable rows) for the chosen blocks' weight layers that ``fraction`` cuts; the head stays whole."""
    if fraction >= 1.0:
        return []
    out: list[tuple[WeightLayer, int]] = []
    for _, block in chosen:
        for _, layer in weight_layers(block):
            assert isinstance(layer, WeightLayer)
            rows = max(1, int(fraction * layer.weight.size(0)))
            if rows < layer.weight.size(0) and _sliceable(layer) and (head is None or layer is not head[1]):
                out.append((layer, rows))
    return out


def _sliceable(layer: WeightLayer) -> bool:
    """Plain layers only (subclasses may not call forward); a grouped conv would need its input split too."""
    return type(layer) in _FIRST_ROWS and getattr(layer, "groups", 1) == 1


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
