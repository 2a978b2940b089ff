"""A compact convolutional transformer (CCT) for small images: a conv tokenizer, a few encoder blocks, seq-pool.

Convolutions make the tokens, so no patch grid or position table is needed and the model stays small enough
for a phone to train (Hassani et al., "Escaping the Big Data Paradigm with Compact Transformers", 2021; the
federated OnDev-LCT models follow the same recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class CCTConfig:
    in_channels: int = 1
    num_classes: int = 10
    dim: int = 64  # token width
    conv_layers: int = 2  # each: 3x3 conv, ReLU, 2x2 max-pool (28x28 -> 7x7 = 49 tokens)
    blocks: int = 2
    heads: int = 4
    mlp_ratio: int = 2


class EncoderBlock(nn.Module):
    """Pre-norm self-attention (every token sees every token) and an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, mlp_ratio * dim), nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln_1(x)).split(c, dim=2))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class CCT(nn.Module):
    """Images (B, C, H, W) -> logits (B, classes)."""

    def __init__(self, config: CCTConfig | None = None):
        super().__init__()
        self.config = c = config or CCTConfig()
        layers: list[nn.Module] = []
        width = c.in_channels
        for _ in range(c.conv_layers):
            layers += [nn.Conv2d(width, c.dim, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)]
            width = c.dim
        self.tokenizer = nn.Sequential(*layers)
        self.blocks = nn.ModuleList(EncoderBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.blocks))
        self.norm = nn.LayerNorm(c.dim)
        self.pool = nn.Linear(c.dim, 1)  # seq-pool: a learned attention weight per token instead of a class token
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.tokenizer(images).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        weights = torch.softmax(self.pool(x), dim=1)  # (B, tokens, 1)
        return self.head((weights * x).sum(1))
