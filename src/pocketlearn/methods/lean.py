"""The lean frozen path: layers that keep for backward only what the trained parameters' gradients need.

PyTorch's conv saves its full input even when the weight is frozen (only the input and bias gradients are
needed, and those need the weight alone); its batch norm saves its input for the weight's gradient even when
that weight is frozen; ReLU and ReLU6 keep an fp32 tensor where the gradient needs one bit per element. Every
method that freezes weights (bias-only, TinyTL, sparse) calls :func:`make_lean`, which swaps in
:class:`LeanConv2d`, :class:`LeanBatchNorm2d` and the 1-bit-mask activations: that is what makes their
activation saving real on a mobile network (conv, batch norm, ReLU6 in every block).
"""

from __future__ import annotations

from typing import Any

import numpy as np
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


def lean_conv2d(conv: nn.Conv2d, x: Tensor, padding: tuple[int, int] | None = None) -> Tensor:
    """``conv(x)``, keeping no copy of ``x`` for backward while ``conv.weight`` is frozen.

    ``padding``: zero padding to use instead of the conv's own (a layer that works out its padding per input).
    """
    pad = conv.padding if padding is None else padding
    if conv.weight.requires_grad or x.dim() != 4 or conv.padding_mode != "zeros" or isinstance(pad, str):
        if padding is None:
            return nn.Conv2d.forward(conv, x)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, pad, conv.dilation, conv.groups)
    return _FrozenConv2d.apply(x, conv.weight, conv.bias, conv.stride, pad, conv.dilation, conv.groups)


class LeanConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that stores no input for backward while its weight is frozen (see :func:`make_lean`)."""

    def forward(self, x: Tensor) -> Tensor:
        return lean_conv2d(self, x)


class _FrozenNorm(torch.autograd.Function):
    """Batch norm with running statistics and a frozen scale, ``x * scale + shift`` per channel.

    It keeps only the (resident) weight and running variance: the scale is recomputed in backward.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, running_var: Tensor, eps: float, shift: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)  # x (B, C, ...); weight, running_var, shift (C,)
        return torch.addcmul(shift.view(view), x, (weight * torch.rsqrt(running_var + eps)).view(view))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, running_var, ctx.eps, _ = inputs
        ctx.save_for_backward(weight, running_var)
        ctx.dims = (0, *range(2, x.dim()))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None, Tensor | None]:
        weight, running_var = ctx.saved_tensors
        view = (1, -1) + (1,) * (grad.dim() - 2)
        scale = (weight * torch.rsqrt(running_var + ctx.eps)).view(view)
        grad_x = grad * scale if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, grad.sum(ctx.dims) if ctx.needs_input_grad[4] else None


class LeanBatchNorm2d(nn.BatchNorm2d):
    """A batch norm whose frozen scale keeps nothing for backward; only its shift (bias) may train.

    On the lean path a frozen batch norm always normalizes with its running statistics, as at inference: that
    is what a pretrained network's features mean, and what lets a batch of one train.
    """

    @property
    def frozen(self) -> bool:
        """Normalizing with its running statistics, which training then leaves as they are."""
        return self.weight is not None and not self.weight.requires_grad and self.running_mean is not None

    def forward(self, x: Tensor) -> Tensor:
        if not self.frozen:
            return super().forward(x)
        assert self.weight is not None and self.running_mean is not None
        assert self.running_var is not None and self.bias is not None
        with torch.no_grad():
            offset = self.running_mean * self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - offset  # the bias's gradient passes straight through
        return _FrozenNorm.apply(x, self.weight.detach(), self.running_var, self.eps, shift)


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor as uint8, eight elements a byte, zero-padded (numpy's packbits: ~20x torch ops' speed)."""
    flat = mask.reshape(-1)
    if flat.device.type != "cpu":
        return _pack_with_torch(flat)
    return torch.from_numpy(np.packbits(flat.contiguous().numpy()))


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """The bool tensor of ``shape`` that :func:`pack_bits` packed."""
    if packed.device.type != "cpu":
        return _unpack_with_torch(packed, shape.numel()).view(shape)
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=shape.numel()).view(np.bool_)).view(shape)


_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)  # numpy's bit order: the first element is the high bit


def _pack_with_torch(flat: Tensor) -> Tensor:  # the same bits as numpy's, for an accelerator's tensor
    flat = F.pad(flat, (0, -len(flat) % 8))
    return (flat.view(-1, 8).to(torch.uint8) << _SHIFTS.to(flat.device)).sum(1, dtype=torch.uint8)


def _unpack_with_torch(packed: Tensor, count: int) -> Tensor:
    return ((packed[:, None] >> _SHIFTS.to(packed.device)) & 1).view(-1)[:count].bool()


class _MaskedClamp(torch.autograd.Function):
    """``clamp(x, 0, top)`` (ReLU, or ReLU6 with ``top`` 6) keeping one bit per element for backward."""

    @staticmethod
    def forward(x: Tensor, top: float | None) -> Tensor:
        return x.clamp(0.0, top)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, top = inputs
        passes = x > 0 if top is None else torch.logical_and(x > 0, x < top)
        ctx.save_for_backward(pack_bits(passes))
        ctx.shape = x.shape

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (packed,) = ctx.saved_tensors
        return grad * unpack_bits(packed, ctx.shape), None


class LeanReLU(nn.ReLU):
    """ReLU keeping a 1-bit mask instead of its fp32 output for backward."""

    def forward(self, x: Tensor) -> Tensor:
        return _MaskedClamp.apply(x, None) if x.requires_grad else super().forward(x)


class LeanReLU6(nn.ReLU6):
    """ReLU6 keeping a 1-bit mask instead of its fp32 input for backward."""

    def forward(self, x: Tensor) -> Tensor:
        return _MaskedClamp.apply(x, 6.0) if x.requires_grad else super().forward(x)


_LEAN = {nn.Conv2d: LeanConv2d, nn.BatchNorm2d: LeanBatchNorm2d, nn.ReLU: LeanReLU, nn.ReLU6: LeanReLU6}


def make_lean(model: nn.Module) -> None:
    """Swap in the lean layers (same parameter names): frozen convs and batch norms, and every ReLU/ReLU6.

    A trainable conv or batch norm stays as it was (its lean class falls back to the plain computation), and
    the activations' masks give the same gradients as the plain ones, so this only ever saves memory.
    """
    for module in model.modules():
        lean = _LEAN.get(type(module))
        if lean is None or (isinstance(module, nn.Conv2d | nn.BatchNorm2d)
                            and module.weight is not None and module.weight.requires_grad):
            continue
        module.__class__ = lean


def make_plain(model: nn.Module) -> nn.Module:
    """Undo :func:`make_lean` (for a tracer that cannot see into its custom autograd functions)."""
    plain = {lean: base for base, lean in _LEAN.items()}
    for module in model.modules():
        if type(module) in plain:
            module.__class__ = plain[type(module)]
    return model
