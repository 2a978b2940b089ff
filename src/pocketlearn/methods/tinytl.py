"""TinyTL: frozen weights, trainable biases and lite residual branches beside every Conv2d.

A frozen weight needs no stored input for its gradient, and a bias gradient needs none either, so the
full-resolution activations the backward pass would keep for weight gradients go away. What the model
gains in capacity comes from small branches that only see a downsampled copy of each conv's input.

PyTorch's avg-pool saves its full input for backward even though it needs only the shape; the autograd
function below saves the shape alone (frozen convs do the same through :mod:`pocketlearn.methods.lean`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from pocketlearn.errors import UnsupportedModelError
from pocketlearn.methods.base import GradientConfig, GradientMethod, MethodConfig, freeze, train_biases
from pocketlearn.methods.bias import train_head
from pocketlearn.methods.lean import lean_conv2d


@dataclass(frozen=True)
class TinyTLConfig(GradientConfig):
    downsample: int = 2  # the branch sees the conv's input avg-pooled by this factor
    groups: int = 2  # groups of the branch's 3x3 conv (capped to divide the input channels)
    reduction: int = 1  # the branch's width is the conv's input channels divided by this
    train_head: bool = True  # also train the output layer (a new label set needs it)

    def problems(self) -> list[str]:
        out = super().problems()
        for name in ("downsample", "groups", "reduction"):
            value = getattr(self, name)
            if value < 1:
                out.append(f"`{name}` should be >= 1, got {value}")
        return out


class _AvgPool2d(torch.autograd.Function):
    """avg_pool2d(x, d) with kernel = stride = d; its backward spreads the gradient back from shapes alone."""

    @staticmethod
    def forward(x: Tensor, d: int) -> Tensor:
        return F.avg_pool2d(x, d)  # (B, C, H // d, W // d)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.x_shape, ctx.d = inputs[0].shape, inputs[1]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        d, (h, w) = ctx.d, ctx.x_shape[-2:]
        spread = _repeat2d(grad / (d * d), d)  # (B, C, H//d*d, W//d*d)
        if spread.shape[-2:] == (h, w):
            return spread, None
        return F.pad(spread, (0, w - spread.size(-1), 0, h - spread.size(-2))), None  # floor mode drops edges


def _repeat2d(t: Tensor, f: int) -> Tensor:
    """Nearest upsampling by an integer factor, (..., h, w) -> (..., h*f, w*f), in one allocation."""
    *lead, h, w = t.shape
    return t[..., :, None, :, None].expand(*lead, h, f, w, f).reshape(*lead, h * f, w * f)


def _upsample(r: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling to ``size``; an integer factor needs one allocation (F.interpolate holds two)."""
    (h, w), (rh, rw) = size, r.shape[-2:]
    f = h // rh
    if (h, w) == (rh * f, rw * f):
        return r if f == 1 else _repeat2d(r, f)
    return F.interpolate(r, size=size, mode="nearest")


class LiteResidualConv2d(nn.Module):
    """A frozen conv plus a lite residual branch: pool -> group conv 3x3 -> ReLU -> 1x1 conv -> upsample.

    The 1x1 conv starts at zero, so the wrapped model first computes exactly what it did. Unlike TinyTL
    there is no norm layer (it would save another activation and depend on the batch size) and the
    upsampling is nearest, not bilinear (the bilinear kernel holds a second full-size buffer).
    """

    def __init__(self, conv: nn.Conv2d, downsample: int = 2, groups: int = 2, reduction: int = 1):
        super().__init__()
        self.conv, self.downsample = conv, downsample
        c_in, c_out = conv.in_channels, conv.out_channels
        g = math.gcd(groups, c_in)
        mid = g * math.ceil(math.ceil(c_in / reduction) / g)
        device, dtype = conv.weight.device, conv.weight.dtype
        self.lite_conv = nn.Conv2d(c_in, mid, 3, padding=1, groups=g, device=device, dtype=dtype)
        self.lite_proj = nn.Conv2d(mid, c_out, 1, bias=False, device=device, dtype=dtype)
        nn.init.zeros_(self.lite_proj.weight)

    def forward(self, x: Tensor) -> Tensor:  # x (B, C_in, H, W)
        y = lean_conv2d(self.conv, x)  # (B, C_out, H_out, W_out)
        d = min(self.downsample, x.size(-2), x.size(-1))
        small = _AvgPool2d.apply(x, d) if d > 1 else x  # (B, C_in, H / d, W / d)
        r = self.lite_proj(F.relu(self.lite_conv(small)))  # (B, C_out, H / d, W / d)
        return y.add_(_upsample(r, (y.size(-2), y.size(-1))))  # in place: no autograd node saved y

    def lite_parameters(self) -> list[nn.Parameter]:
        return [*self.lite_conv.parameters(), *self.lite_proj.parameters()]


class TinyTL(GradientMethod):
    """Frozen weights; biases, lite residual branches and the head train.

    Cai et al., "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device Learning", NeurIPS 2020.
    Each ``nn.Conv2d`` is replaced in place by a :class:`LiteResidualConv2d` (its parameters are then
    named ``<conv>.conv.weight``, ``<conv>.lite_conv.weight``, ...).
    """

    name = "tinytl"
    config: TinyTLConfig
    config_cls: ClassVar[type[MethodConfig]] = TinyTLConfig
    quality_rank = 40  # cannot mix: its lite residual modules are not in the plain model

    def select_trainable(self, model: nn.Module) -> nn.Module:
        freeze(model)
        c = self.config
        for name, conv in _unwrapped_convs(model):
            model.set_submodule(name, LiteResidualConv2d(conv, c.downsample, c.groups, c.reduction))
        wrappers = [m for m in model.modules() if isinstance(m, LiteResidualConv2d)]
        if not wrappers:
            raise UnsupportedModelError(
                "tinytl needs Conv2d layers (its lite residual branches sit beside them); this model has none. "
                "Use `bias` or `lora` instead.")
        train_biases(model)
        for wrapper in wrappers:
            for p in wrapper.lite_parameters():
                p.requires_grad_(True)
        if self.config.train_head:
            train_head(model)
        return model


def _unwrapped_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Conv2d layers not already wrapped (nor inside a branch), so preparing twice adds nothing."""
    taken = {id(m) for w in model.modules() if isinstance(w, LiteResidualConv2d) for m in w.modules()}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in taken]
