"""TinyTL: frozen weights, trainable biases and lite residual branches beside each block (or each Conv2d).

A frozen weight needs no stored input for its gradient, and a bias gradient needs none either, so the
full-resolution activations the backward pass would keep for weight gradients go away. What the model
gains in capacity comes from small branches that only see a downsampled copy of each conv's input.

PyTorch's avg-pool saves its full input for backward even though it needs only the shape; the autograd
function below saves the shape alone (frozen convs do the same through :mod:`pocketlearn.methods.lean`).

The branches' own convs run outside oneDNN on CPU. oneDNN compiles machine code for every new conv shape and
direction (forward, input and weight gradients): for EfficientNet-Lite0's 15 branches that is ~10 MiB of
resident code at batch 1, more than the branches' weights and activations together, for convs that are tiny.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from pocketlearn.errors import UnsupportedModelError
from pocketlearn.methods.base import GradientConfig, GradientMethod, MethodConfig, freeze, train_biases
from pocketlearn.methods.bias import train_head
from pocketlearn.methods.lean import make_lean


@dataclass(frozen=True)
class TinyTLConfig(GradientConfig):
    downsample: int = 2  # the branch sees the conv's input avg-pooled by this factor
    # groups of the branch's 3x3 conv (capped to divide the input channels); None: 8 beside a block, whose wide
    # input would make a 2-group branch a quarter of EfficientNet-Lite0's weights, 2 beside a single conv
    groups: int | None = None
    # the branch's width is its input channels divided by this; None: 2 beside a block (half the branches'
    # weights and gradients for 0.2 points on EfficientNet-Lite0's transfer, what keeps batch 1 within 1.3x
    # inference's peak), 1 beside a single conv
    reduction: int | None = None
    train_head: bool = True  # also train the output layer (a new label set needs it)

    def problems(self) -> list[str]:
        out = super().problems()
        for name in ("downsample", "groups", "reduction"):
            value = getattr(self, name)
            if value is not None and value < 1:
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


@contextmanager
def _without_onednn() -> Iterator[None]:
    """A process-wide switch (PyTorch has no per-call one), so the convs inside run on im2col and BLAS."""
    was = bool(torch.backends.mkldnn.enabled)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a module property, typed as its descriptor
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was  # type: ignore[assignment]


class _BranchConv2d(torch.autograd.Function):
    """A stride-1, bias-free conv2d (a branch's) computed without oneDNN, in forward and backward."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, padding: int, groups: int) -> Tensor:
        with _without_onednn():
            return F.conv2d(x, weight, None, 1, padding, 1, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False)
        p = ctx.padding
        with _without_onednn():
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], ctx.groups, needs)
        return grad_x, grad_w, None, None


def _branch_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    if x.device.type != "cpu" or not torch.is_grad_enabled():  # no per-shape compile to avoid (or no backward)
        return conv(x)
    return _BranchConv2d.apply(x, conv.weight, int(conv.padding[0]), conv.groups)  # type: ignore[index]


class _LiteResidual(nn.Module):
    """A frozen layer or block plus a lite residual branch added to its output.

    The branch: pool -> group conv 3x3 -> group norm -> ReLU -> 1x1 conv -> upsample to the main output's size.
    The 1x1 conv starts at zero, so the wrapped model first computes exactly what it did. Group norm (not
    batch norm) keeps a batch of one trainable. Upsampling is nearest, not bilinear (the bilinear kernel holds a
    second full-size buffer), to the main output's exact size, so any padding scheme and stride fits.
    """

    def __init__(self, c_in: int, c_out: int, downsample: int, groups: int, reduction: int, like: Tensor):
        super().__init__()
        self.downsample = downsample
        g = math.gcd(groups, c_in)
        mid = g * math.ceil(math.ceil(c_in / reduction) / g)
        device, dtype = like.device, like.dtype
        self.lite_conv = nn.Conv2d(c_in, mid, 3, padding=1, groups=g, bias=False, device=device, dtype=dtype)
        self.lite_norm = nn.GroupNorm(math.gcd(mid, 8), mid, device=device, dtype=dtype)
        self.lite_proj = nn.Conv2d(mid, c_out, 1, bias=False, device=device, dtype=dtype)
        nn.init.zeros_(self.lite_proj.weight)

    def residual(self, x: Tensor, size: tuple[int, int]) -> Tensor:  # x (B, C_in, H, W) -> (B, C_out, *size)
        d = min(self.downsample, x.size(-2), x.size(-1))
        small = _AvgPool2d.apply(x, d) if d > 1 else x  # (B, C_in, H / d, W / d)
        if torch.is_grad_enabled():  # keep only `small`: the branch's inside is recomputed in backward (cheap)
            r = checkpoint(self._branch, small, use_reentrant=False)
        else:
            r = self._branch(small)
        return _upsample(r, size)

    def _branch(self, small: Tensor) -> Tensor:  # (B, C_in, h, w) -> (B, C_out, h, w)
        hidden = F.relu(self.lite_norm(_branch_conv(self.lite_conv, small)))
        return _branch_conv(self.lite_proj, hidden)

    def lite_parameters(self) -> list[nn.Parameter]:
        return [*self.lite_conv.parameters(), *self.lite_norm.parameters(), *self.lite_proj.parameters()]


class LiteResidualConv2d(_LiteResidual):
    """A frozen conv (any padding, its own forward) with a lite residual branch beside it."""

    def __init__(self, conv: nn.Conv2d, downsample: int = 2, groups: int = 2, reduction: int = 1):
        super().__init__(conv.in_channels, conv.out_channels, downsample, groups, reduction, conv.weight)
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:  # x (B, C_in, H, W)
        y = self.conv(x)  # (B, C_out, H_out, W_out); lean: a frozen conv keeps no input
        return y.add_(self.residual(x, (y.size(-2), y.size(-1))))  # in place: no autograd node saved y


class LiteResidualBlock(_LiteResidual):
    """A frozen block (e.g. an inverted bottleneck) with a lite residual branch from its input to its output.

    That is where TinyTL places them: the branch sees the block's narrow input, never its expanded inside.
    """

    def __init__(self, block: nn.Module, downsample: int = 2, groups: int = 8, reduction: int = 2):
        like = next(block.parameters())
        c_in, c_out = int(block.in_channels), int(block.out_channels)  # type: ignore[arg-type]
        super().__init__(c_in, c_out, downsample, groups, reduction, like)
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + self.residual(x, (y.size(-2), y.size(-1)))


class TinyTL(GradientMethod):
    """Frozen weights; biases, lite residual branches and the head train.

    Cai et al., "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device Learning", NeurIPS 2020.
    A model's marked blocks (see :func:`_sites`) are each replaced in place by a :class:`LiteResidualBlock`
    (parameters ``<block>.block.…``, ``<block>.lite_conv.weight``, ...); a model without them gets a
    :class:`LiteResidualConv2d` for each ``nn.Conv2d`` (``<conv>.conv.weight``, ``<conv>.lite_conv.weight``, ...).
    """

    name = "tinytl"
    config: TinyTLConfig
    config_cls: ClassVar[type[MethodConfig]] = TinyTLConfig
    quality_rank = 40  # cannot mix: its lite residual modules are not in the plain model

    def select_trainable(self, model: nn.Module) -> nn.Module:
        freeze(model)
        c = self.config
        blocks = _sites(model, lambda m: getattr(m, "lite_residual_site", False) is True)
        for name, block in blocks:
            model.set_submodule(name, LiteResidualBlock(block, c.downsample, c.groups or 8, c.reduction or 2))
        if not blocks:
            for name, conv in _sites(model, lambda m: isinstance(m, nn.Conv2d)):
                assert isinstance(conv, nn.Conv2d)
                model.set_submodule(name, LiteResidualConv2d(conv, c.downsample, c.groups or 2, c.reduction or 1))
        wrappers = [m for m in model.modules() if isinstance(m, _LiteResidual)]
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
        make_lean(model)
        return model


def _sites(model: nn.Module, wanted: Callable[[nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    """The outermost modules ``wanted`` picks, outside any branch already added (preparing twice adds nothing).

    A model marks the blocks that get a branch (its inverted bottlenecks) with a class attribute
    ``lite_residual_site = True`` and ``in_channels``/``out_channels``; without any, every Conv2d gets one.
    """
    taken = {id(m) for w in model.modules() if isinstance(w, _LiteResidual) for m in w.modules()}
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer, _ in found)
        if wanted(m) and id(m) not in taken and not inside:
            found.append((name, m))
    return found
