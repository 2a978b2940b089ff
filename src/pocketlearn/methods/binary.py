"""Binary weights: the middle layers' weights are ±1, stored and sent at one bit per weight.

Two ways to train them: ``bop`` flips the ±1 weights directly from a moving average of their gradients (no
real-valued copy), ``latent`` keeps a real latent weight per binary weight (BinaryConnect). Biases, the
first and the last layer stay real by default and train with Adam.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.errors import DataError, UnsupportedModelError
from pocketlearn.methods.base import Batch, MemoryTraits, MethodConfig, TrainingMethod, forward_loss, weight_layers


@dataclass(frozen=True)
class BinaryConfig(MethodConfig):
    lr: float = 0.01  # Adam, for the real-valued parameters (and the latent weights with optimizer="latent")
    optimizer: Literal["bop", "latent"] = "bop"
    threshold: float = 1e-6  # Bop's tau: flip once the gradient's moving average is stronger than this
    gamma: float = 1e-3  # Bop's adaptivity rate: weight of the newest gradient in the moving average
    keep_first_last_real: bool = True  # the input and output layers are small and sensitive: keep them real
    scale: bool = True  # multiply each output channel by alpha = mean|W| of the original layer (fixed)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.optimizer not in ("bop", "latent"):
            out.append(f"optimizer should be 'bop' or 'latent', got {self.optimizer!r}")
        if self.threshold < 0:
            out.append(f"threshold should be >= 0, got {self.threshold}")
        if not 0.0 < self.gamma <= 1.0:
            out.append(f"gamma should be in (0, 1], got {self.gamma}")
        return out


class SignSTE(torch.autograd.Function):
    """``sign(w)`` (with sign(0) = +1) forward; straight-through gradient where ``|w| <= 1`` backward."""

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return signs_of(w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def signs_of(w: Tensor) -> Tensor:
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


class BinaryLayer(nn.Module):
    """Forward with ±1 weights times a fixed per-output-channel scale ``alpha``.

    ``weight`` is itself ±1 (Bop) or a real latent that is binarised on the fly (``latent=True``). Scaling
    the output rather than the weight keeps autograd from saving a scaled copy of the weight.
    """

    weight: Tensor
    alpha: Tensor  # (C_out,) for Linear, (C_out, 1, 1) for Conv2d
    latent: bool

    def binary_weight(self) -> Tensor:
        return SignSTE.apply(self.weight) if self.latent else self.weight


class BinaryLinear(BinaryLayer, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.linear(x, self.binary_weight()) * self.alpha  # (B, *, C_out)
        return y if self.bias is None else y + self.bias


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        y = self._conv_forward(x, self.binary_weight(), None) * self.alpha  # (B, C_out, H', W')
        return y if self.bias is None else y + self.bias.view(-1, 1, 1)


_BINARY_OF: dict[type[nn.Module], type[BinaryLayer]] = {nn.Linear: BinaryLinear, nn.Conv2d: BinaryConv2d}


def binarize_layer(layer: nn.Module, *, latent: bool, scale: bool) -> BinaryLayer:
    """Turn ``layer`` into its binary version in place (same object, parameters, device and hooks).

    A layer that is binary already (a model restored from a checkpoint) keeps its ``alpha``.
    """
    w = layer.get_parameter("weight").detach()  # (C_out, C_in, ...)
    if not isinstance(layer, BinaryLayer):
        alpha = w.abs().mean(dim=tuple(range(1, w.dim()))) if scale else w.new_ones(w.shape[0])  # (C_out,)
        layer.__class__ = _BINARY_OF[type(layer)]  # only forward changes
        assert isinstance(layer, BinaryLayer)
        layer.register_buffer("alpha", alpha.view(-1, *([1] * (w.dim() - 2))))
    layer.latent = latent
    if not latent:
        layer.weight.data.copy_(signs_of(w))  # Bop trains the ±1 weights themselves
    return layer


def bop_flips(w: Tensor, m: Tensor, threshold: float) -> Tensor:
    """Where Bop flips: the moving average is strong (``|m| > tau``) and pushes against ``w``'s sign."""
    return (m.abs() > threshold) & (torch.sign(m) == torch.sign(w))


class Bop(torch.optim.Optimizer):
    """Bop (Helwegen et al., NeurIPS 2019): ``m = (1 - gamma) m + gamma g``; flip ``w`` where ``bop_flips``."""

    def __init__(self, params: Iterable[Tensor], *, threshold: float, gamma: float):
        super().__init__(params, {"threshold": threshold, "gamma": gamma})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "m" not in state:
                    state["m"] = torch.zeros_like(w)
                m = state["m"].lerp_(w.grad, group["gamma"])
                w.mul_(1 - 2 * bop_flips(w, m, group["threshold"]).to(w.dtype))  # flip: w -> -w


class BinaryWeights(TrainingMethod):
    """Binary-weight training with Bop or with latent weights (BinaryConnect).

    Bop: Helwegen et al., NeurIPS 2019, "Latent Weights Do Not Exist: Rethinking Binarized Neural Network
    Optimization". Latent: Courbariaux et al., NeurIPS 2015, "BinaryConnect: Training Deep Neural Networks
    with binary weights during propagations".
    Linear/Conv2d layers (but the first and last, by default) become binary layers whose weights are ±1
    times a per-output-channel ``alpha = mean|W|`` fixed at conversion (as in XNOR-Net's scaling, but frozen):
    without it, ±1 weights would multiply the activations by ~sqrt(fan_in)/|W| and the real layers around
    them would see a different scale than at initialisation. The scale costs one float per output channel.
    """

    name = "binary"
    config: BinaryConfig
    config_cls: ClassVar[type[MethodConfig]] = BinaryConfig
    quality_rank = 60

    def prepare(self, model: nn.Module) -> nn.Module:
        latent = self.config.optimizer == "latent"
        self.binary_layers = {name: binarize_layer(layer, latent=latent, scale=self.config.scale)
                              for name, layer in self._layers_to_binarize(model)}
        for p in model.parameters():
            p.requires_grad_(True)
        binary = [layer.weight for layer in self.binary_layers.values()]
        binary_ids = {id(w) for w in binary}
        real = [p for p in model.parameters() if id(p) not in binary_ids]
        self.bop = None if latent else Bop(binary, threshold=self.config.threshold, gamma=self.config.gamma)
        adam_params = real + binary if latent else real
        self.adam = torch.optim.Adam(adam_params, lr=self.config.lr) if adam_params else None
        self.num_real = sum(p.numel() for p in real)
        return model

    def _layers_to_binarize(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        layers = list(weight_layers(model))
        if self.config.keep_first_last_real:
            layers = layers[1:-1]
        tied = _tied_parameters(model)
        chosen = [(n, m) for n, m in layers
                  if (type(m) in _BINARY_OF or isinstance(m, BinaryLayer)) and id(m.weight) not in tied]
        if not chosen:
            why = ("keep_first_last_real=True keeps the first and last real; use a model with a hidden layer "
                   "between them, or keep_first_last_real=False" if self.config.keep_first_last_real else
                   "only plain nn.Linear/nn.Conv2d layers whose weight is not tied to another can be binarised")
            raise UnsupportedModelError(f"binary: no layer to binarise: the model has "
                                        f"{len(list(weight_layers(model)))} Linear/Conv layers and {why}")
        return chosen

    def _update(self, batch: Batch) -> float:
        loss = forward_loss(self.model, batch, self.loss_fn)
        loss.backward()
        for opt in (self.bop, self.adam):
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        if self.config.optimizer == "latent":
            with torch.no_grad():
                for layer in self.binary_layers.values():
                    layer.weight.clamp_(-1, 1)  # BinaryConnect: latents live in [-1, 1]
        return loss.item()

    def memory_traits(self) -> MemoryTraits:
        num_binary = sum(layer.weight.numel() for layer in self.binary_layers.values())
        if self.config.optimizer == "bop":
            # One slot (m) for the binary weights; Adam's second slot for the real ones.
            return MemoryTraits("autograd", gradient_bytes_per_param=4, optimizer_slots=1,
                                extra_bytes=4 * self.num_real)
        # Adam on everything; autograd keeps each layer's binarised weight sign(w) until backward.
        return MemoryTraits("autograd", gradient_bytes_per_param=4, optimizer_slots=2,
                            extra_bytes=4 * num_binary)

    def packed_weights(self) -> dict[str, bytes]:
        """The binary layers' weights at one bit each (the at-rest / on-the-wire form), by parameter name."""
        return {f"{name}.weight": pack_signs(layer.weight) for name, layer in self.binary_layers.items()}

    def load_packed_weights(self, packed: dict[str, bytes]) -> None:
        """Set the binary weights from :meth:`packed_weights` output (latents, if any, become ±1)."""
        with torch.no_grad():
            for name, layer in self.binary_layers.items():
                signs = unpack_signs(packed[f"{name}.weight"], tuple(layer.weight.shape))
                layer.weight.copy_(signs.to(layer.weight))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key, opt in (("bop", self.bop), ("adam", self.adam)):
            if opt is not None:
                state[key] = opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key, opt in (("bop", self.bop), ("adam", self.adam)):
            if opt is not None and key in state:
                opt.load_state_dict(state[key])


def _tied_parameters(model: nn.Module) -> set[int]:
    """Parameters registered in more than one place (an LM head tied to its embeddings)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, count in seen.items() if count > 1}


def pack_signs(t: Tensor) -> bytes:
    """Signs of ``t`` at one bit each (1 for >= 0), ``ceil(numel / 8)`` bytes, row-major order."""
    bits = (t.detach() >= 0).flatten().cpu().numpy()
    return np.packbits(bits).tobytes()


def unpack_signs(data: bytes, shape: tuple[int, ...]) -> Tensor:
    """The ±1 float32 tensor of ``shape`` that :func:`pack_signs` packed."""
    n = math.prod(shape)
    if len(data) != math.ceil(n / 8):
        raise DataError(f"packed signs have {len(data)} bytes; shape {shape} needs {math.ceil(n / 8)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n)
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1).reshape(shape)
