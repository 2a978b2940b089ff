"""Frozen convolutions that keep no copy of their input for backward.

PyTorch's conv saves its full input even when the weight is frozen (only the input and bias gradients are
needed, and those need the weight alone). Every method that freezes conv weights (bias-only, TinyTL, sparse)
swaps in :class:`LeanConv2d`, which is what makes their activation saving real.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.nn.grad import conv2d_input


class _FrozenConv2d(torch.autograd.Function):
    """conv2d whose backward gives the input and bias gradients only, so it keeps no copy of the input."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, *conv_args: Any) -> Tensor:
        return F.conv2d(x, weight, bias, *conv_args)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, _, *conv_args = inputs
        ctx.save_for_backward(weight)  # a parameter: resident anyway
        ctx.x_shape, ctx.conv_args = x.shape, conv_args

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # grad (B, C_out, H_out, W_out)
        (weight,) = ctx.saved_tensors
        needs_x, _, needs_bias = ctx.needs_input_grad[:3]
        grad_x = conv2d_input(ctx.x_shape, weight, grad, *ctx.conv_args) if needs_x else None
        grad_bias = grad.sum((0, 2, 3)) if needs_bias else None
        return (grad_x, None, grad_bias, *([None] * len(ctx.conv_args)))


def lean_conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``, keeping no copy of ``x`` for backward while ``conv.weight`` is frozen."""
    if conv.weight.requires_grad or x.dim() != 4 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return nn.Conv2d.forward(conv, x)
    return _FrozenConv2d.apply(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class LeanConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that stores no input for backward while its weight is frozen (see :func:`make_lean`)."""

    def forward(self, x: Tensor) -> Tensor:
        return lean_conv2d(self, x)


def make_lean(model: nn.Module) -> None:
    """Turn every plain ``nn.Conv2d`` with a frozen weight into a :class:`LeanConv2d`, keeping parameter names."""
    for module in model.modules():
        if type(module) is nn.Conv2d and not module.weight.requires_grad:
            module.__class__ = LeanConv2d
