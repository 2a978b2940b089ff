"""Small reference models for images and tabular data, built from plain Sequential stacks.

Plain ``nn.Sequential`` keeps forward order equal to registration order, which the layer-wise methods
(PEPITA, sparse update, TinyTL) rely on.
"""

from __future__ import annotations

from torch import nn


def mlp(in_features: int = 784, hidden: tuple[int, ...] = (256, 256), num_classes: int = 10) -> nn.Sequential:
    """Fully connected ReLU network; input (B, in_features) or images flattened on the way in."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int] = (16, 32), image_size: int = 28
        ) -> nn.Sequential:
    """Two conv blocks and a linear head; input (B, C, H, W)."""
    c1, c2 = widths
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
        nn.Flatten(),
        nn.Linear(c2 * side * side, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )
