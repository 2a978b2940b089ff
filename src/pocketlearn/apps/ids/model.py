"""The cloud model.

A small MLP over every attack type, trained on the known ones only (its other outputs wait for devices to meet
those types).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pocketlearn.models.small import mlp


@dataclass(frozen=True)
class BaseModelConfig:
    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0


def train_base_model(x: np.ndarray, y: np.ndarray, num_classes: int, config: BaseModelConfig = BaseModelConfig()
                     ) -> nn.Sequential:
    """Train the downloadable model "in the cloud" (Adam, cross-entropy) and return it in eval mode."""
    torch.manual_seed(config.seed)
    model = mlp(x.shape[1], config.hidden, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(ys), generator=gen).split(config.batch_size):
            loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class indexes for the rows of ``x``."""
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).argmax(1).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean()) if len(y) else 0.0
