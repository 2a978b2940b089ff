"""Forward-only learning: PEPITA and its memory-efficient variant MEMPEPITA.

No backward pass and no autograd: a clean forward pass gives the output error, a second forward pass
runs on the input modulated by a fixed random projection of that error, and each layer learns from the
difference between its clean and modulated activations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from pocketlearn.errors import UnsupportedModelError
from pocketlearn.methods.base import Batch, LossFn, MemoryTraits, MethodConfig, TrainingMethod, cross_entropy

WeightLayer = nn.Linear | nn.Conv2d

# Element-wise activations that belong to the weight layer right before them (the unit's output).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
               nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)  # applied with one mask to both streams
RANDOM_MASKS = (nn.AlphaDropout, nn.FeatureAlphaDropout)  # would perturb the two streams differently


@dataclass(frozen=True)
class PepitaConfig(MethodConfig):
    lr: float = 0.1
    momentum: float = 0.9
    # F ~ U[-1, 1] * feedback_scale * sqrt(6 / d_in). The paper's 0.05 is for inputs in [0, 1]; 0.1 suits
    # standardised inputs. Larger values learn faster but make deeper nets diverge (weights grow).
    feedback_scale: float = 0.1
    memory_efficient: bool = False  # MEMPEPITA: recompute clean activations instead of storing them
    seed: int = 0  # seeds the feedback matrix F (and dropout masks, shared by both streams)

    def problems(self) -> list[str]:
        out = super().problems()
        if not 0.0 <= self.momentum < 1.0:
            out.append(f"momentum should be in [0, 1), got {self.momentum}")
        if self.feedback_scale <= 0:
            out.append(f"feedback_scale should be positive, got {self.feedback_scale}")
        return out


@dataclass
class Unit:
    """A weight layer and the element-wise activation right after it; PEPITA compares streams at its output."""

    name: str
    layer: WeightLayer
    activation: nn.Module | None

    def __call__(self, h: Tensor) -> Tensor:
        out = self.layer(h)
        act = self.activation
        if act is None:
            return out
        if getattr(act, "inplace", None) is False:  # no autograd here, so overwrite the layer's output
            switchable: Any = act  # nn.ReLU and kin: a plain ``inplace`` flag
            switchable.inplace = True
            try:
                return act(out)
            finally:
                switchable.inplace = False
        return act(out)


class Pepita(TrainingMethod):
    """Forward-only training by error-driven input modulation: PEPITA, and MEMPEPITA with less memory.

    PEPITA: Dellaferrera & Kreiman, ICML 2022, "Error-driven Input Modulation: Solving the Credit Assignment
    Problem without a Backward Pass". MEMPEPITA: Pau & Aymone 2023, "Suitability of Forward-Forward and
    PEPITA Learning to MLCommons-Tiny Benchmarks"; analysed in Srinivasan et al. 2023, "Forward Learning
    with Top-Down Feedback: Empirical and Analytical Characterization".

    Clean pass ``h_l``; error ``e = softmax(out) - onehot(y)``; modulated pass on ``x + F e``;
    ``dW_l = (h_l - h_l^mod) h_{l-1}^mod^T`` for hidden layers and ``dW_L = e h_{L-1}^mod^T`` for the last.
    PEPITA keeps every clean activation for the modulated pass; MEMPEPITA recomputes them layer by layer
    beside it (three forward passes, one layer alive at a time) and gives the same updates. The error is
    cross-entropy's (``softmax - onehot``) whatever ``loss_fn`` is; ``loss_fn`` only sets the reported loss.
    Supports ``nn.Sequential`` MLPs and small CNNs built from Linear/Conv2d, activations, pooling, Flatten
    and Dropout. Like the paper, it works best on shallow nets (one or two hidden layers, one conv layer);
    deeper stacks tend to diverge as PEPITA's hidden weights grow.
    """

    name = "pepita"
    config: PepitaConfig
    config_cls: ClassVar[type[MethodConfig]] = PepitaConfig
    quality_rank = 80

    def __init__(self, model: nn.Module, config: MethodConfig | None = None, *, loss_fn: LossFn = cross_entropy):
        self.feedback: Tensor | None = None  # F (C, d_in), made on the first batch, when d_in is known
        super().__init__(model, config, loss_fn=loss_fn)

    def prepare(self, model: nn.Module) -> nn.Module:
        self.stages = parse_stages(model)
        self.last_unit = max(i for i, s in enumerate(self.stages) if isinstance(s, Unit))
        for p in model.parameters():
            p.requires_grad_(False)
        self.momentum_buffers: dict[str, Tensor] = {}
        if self.config.momentum > 0:
            self.momentum_buffers = {n: torch.zeros_like(p) for n, p in self._weight_params(model).items()}
        return model

    def trainable_parameters(self) -> dict[str, Tensor]:
        return self._weight_params(self.model)

    def memory_traits(self) -> MemoryTraits:
        feedback_bytes = 0 if self.feedback is None else self.feedback.numel() * self.feedback.element_size()
        return MemoryTraits(
            "one_layer" if self.config.memory_efficient else "all_layers",
            gradient_bytes_per_param=0,
            optimizer_slots=1 if self.config.momentum > 0 else 0,
            temporary_param_copies=1,  # a conv layer's dW (Linear layers accumulate in place)
            extra_bytes=feedback_bytes,
        )

    @torch.no_grad()
    def _update(self, batch: Batch) -> float:
        x, y = batch
        keep = not self.config.memory_efficient
        logits, clean = self._clean_pass(x, keep=keep)  # (B, C), every unit's output if kept
        error = torch.softmax(logits, -1) - nn.functional.one_hot(y, logits.size(-1)).to(logits.dtype)  # (B, C)
        loss = self.loss_fn(logits, y).item()
        del logits
        self._modulated_pass(x, error, clean if keep else None)
        return loss

    def _clean_pass(self, x: Tensor, *, keep: bool) -> tuple[Tensor, list[Tensor]]:
        h, outputs = x, []
        for i, stage in enumerate(self.stages):
            h = self._run(i, stage, h)
            if keep and isinstance(stage, Unit):
                outputs.append(h)
        return h, outputs

    def _modulated_pass(self, x: Tensor, error: Tensor, clean: list[Tensor] | None) -> None:
        """Update each unit as soon as its modulated output is known; ``clean=None`` recomputes (MEMPEPITA).

        Only the current unit's clean and modulated inputs and outputs are alive at once (with ``clean=None``),
        and the difference of the two streams is never materialised: its outer product is accumulated from
        each stream separately.
        """
        feedback = self._feedback_for(x, error.size(-1))  # (C, d_in)
        h, k = x, 0
        h_mod = torch.addmm(x.reshape(len(x), -1), error, feedback).view_as(x)  # x + F e, (B, *input)
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, Unit):
                h_mod = self._run(i, stage, h_mod)
                h = self._run(i, stage, h) if clean is None else h
                continue
            if i == self.last_unit:
                self._apply(stage, h_mod, error)
                return
            h = self._run(i, stage, h) if clean is None else clean[k]  # the clean output, (B, ...)
            k += 1
            out_mod = self._run(i, stage, h_mod)
            self._apply(stage, h_mod, h, out_mod)  # dW = (h - out_mod) ⊗ h_mod
            h_mod = out_mod

    def _run(self, i: int, stage: Unit | nn.Module, h: Tensor) -> Tensor:
        if isinstance(stage, DROPOUTS) and stage.training and stage.p > 0:
            seed = (self.config.seed * 1_000_003 + self.steps_done) * 1_009 + i  # same in every pass of a step
            return same_mask_dropout(stage, h, seed=seed)
        return stage(h)

    def _apply(self, unit: Unit, h_in: Tensor, plus: Tensor, minus: Tensor | None = None) -> None:
        """``W -= lr * dW`` (with momentum) for the weight and bias of one unit, ``dW = (plus - minus) ⊗ h_in``."""
        lr, momentum = self.config.lr, self.config.momentum
        targets, alpha = [unit.layer.weight, unit.layer.bias], -lr
        buffers = [self.momentum_buffers.get(f"{unit.name}.{s}") for s in ("weight", "bias")]
        if self.momentum_buffers:
            targets, alpha = [b.mul_(momentum) if b is not None else None for b in buffers], 1.0
        accumulate_update(unit.layer, h_in, plus, targets, alpha)
        if minus is not None:
            accumulate_update(unit.layer, h_in, minus, targets, -alpha)
        if self.momentum_buffers:
            for param, buf in zip((unit.layer.weight, unit.layer.bias), buffers, strict=True):
                if param is not None and buf is not None:
                    param.sub_(buf, alpha=lr)

    def _feedback_for(self, x: Tensor, num_classes: int) -> Tensor:
        """The fixed projection F (C, d_in), seeded: U[-1, 1] * feedback_scale * sqrt(6 / d_in)."""
        d_in = x[0].numel()
        if self.feedback is None:
            gen = torch.Generator().manual_seed(self.config.seed)
            bound = self.config.feedback_scale * math.sqrt(6 / d_in)
            f = (torch.rand(num_classes, d_in, generator=gen) * 2 - 1) * bound
            self.feedback = f
        if self.feedback.shape != (num_classes, d_in):
            raise UnsupportedModelError(
                f"pepita: the feedback matrix was made for {self.feedback.shape[1]} inputs and "
                f"{self.feedback.shape[0]} classes, but this batch has {d_in} inputs and {num_classes} classes; "
                "use one input size and one label set per method")
        self.feedback = self.feedback.to(device=x.device, dtype=x.dtype)  # no-op unless the model moved
        return self.feedback

    def _weight_params(self, model: nn.Module) -> dict[str, Tensor]:
        units = {s.name for s in self.stages if isinstance(s, Unit)}
        return {n: p for n, p in model.named_parameters() if n.rpartition(".")[0] in units}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "momentum": dict(self.momentum_buffers), "feedback": self.feedback}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name, buf in state.get("momentum", {}).items():
            self.momentum_buffers[name].copy_(buf)
        if state.get("feedback") is not None:
            self.feedback = state["feedback"]


def accumulate_update(layer: WeightLayer, h_in: Tensor, diff: Tensor, targets: list[Tensor | None],
                      alpha: float) -> None:
    """``targets += alpha * (dW, db)``, batch means of ``dW = diff ⊗ h_in`` and ``db = diff``, in place.

    For Linear the outer product goes straight into the target (addmm_): no weight-sized temporary.
    For Conv2d it is summed over output positions.
    """
    weight, bias = targets
    scale = alpha / h_in.size(0)
    if isinstance(layer, nn.Conv2d):  # h_in (B, C_in, H, W), diff (B, C_out, H', W')
        if weight is not None:
            weight.add_(conv2d_weight(h_in, layer.weight.shape, diff, layer.stride, conv_padding(layer),
                                      layer.dilation, layer.groups), alpha=scale)
        if bias is not None:
            bias.add_(diff.sum((0, 2, 3)), alpha=scale)
        return
    diff2, h2 = diff.reshape(-1, diff.size(-1)), h_in.reshape(-1, h_in.size(-1))  # (B*, out), (B*, in)
    if weight is not None:
        weight.addmm_(diff2.T, h2, alpha=scale)
    if bias is not None:
        bias.add_(diff2.sum(0), alpha=scale)


def conv_padding(layer: nn.Conv2d) -> tuple[int, int]:
    """Numeric padding for ``padding='same'/'valid'`` (symmetric only)."""
    if isinstance(layer.padding, tuple):
        return (int(layer.padding[0]), int(layer.padding[1]))
    if layer.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
    if any(t % 2 for t in totals):
        raise UnsupportedModelError("pepita: Conv2d padding='same' with an even kernel pads unevenly; "
                                    "use an odd kernel size or explicit integer padding")
    return (totals[0] // 2, totals[1] // 2)


def same_mask_dropout(module: nn.Module, h: Tensor, *, seed: int) -> Tensor:
    """Dropout whose mask depends only on ``seed``, so clean and modulated streams drop the same units."""
    p = float(module.p)  # type: ignore[arg-type]
    shape = h.shape if type(module) is nn.Dropout else h.shape[:2] + (1,) * (h.dim() - 2)
    gen = torch.Generator(device=h.device).manual_seed(seed % 2**63)
    keep = torch.rand(shape, generator=gen, device=h.device, dtype=h.dtype) >= p
    return h * keep / (1 - p)


def parse_stages(model: nn.Module) -> list[Unit | nn.Module]:
    """Flatten a (nested) Sequential into units (weight layer + activation) and parameter-free modules."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(
            f"pepita needs an nn.Sequential model (forward order must be known), got {type(model).__name__}; "
            "wrap the layers in nn.Sequential, or use method 'mezo' or 'bias'")
    leaves = list(_leaves(model, ""))
    stages: list[Unit | nn.Module] = []
    for i, (name, module) in enumerate(leaves):
        previous = stages[-1] if stages else None
        if isinstance(module, ACTIVATIONS) and isinstance(previous, Unit) and previous.activation is None \
                and leaves[i - 1][1] is previous.layer:
            previous.activation = module
        elif type(module) is nn.Linear or type(module) is nn.Conv2d:  # exact: subclasses may forward differently
            _check_conv(name, module)
            stages.append(Unit(name, module, None))
        elif next(module.parameters(), None) is not None or isinstance(module, RANDOM_MASKS):
            raise UnsupportedModelError(
                f"pepita supports Linear/Conv2d weight layers with element-wise activations, pooling, Flatten "
                f"and Dropout; layer {name!r} is a {type(module).__name__}. Use method 'mezo' (any model) or "
                "'bias' instead")
        else:
            stages.append(module)
    _check_ending(stages)
    return stages


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, full + ".")
        elif next(child.children(), None) is not None:
            raise UnsupportedModelError(
                f"pepita: layer {full!r} ({type(child).__name__}) is a composite module whose forward order "
                "is unknown; build the model from nn.Sequential blocks, or use method 'mezo' or 'bias'")
        else:
            yield full, child


def _check_conv(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise UnsupportedModelError(f"pepita: Conv2d {name!r} uses padding_mode={layer.padding_mode!r}; "
                                    "only 'zeros' is supported")


def _check_ending(stages: list[Unit | nn.Module]) -> None:
    units = [s for s in stages if isinstance(s, Unit)]
    if not units:
        raise UnsupportedModelError("pepita: the model has no Linear or Conv2d layer to train")
    last = units[-1]
    if stages[-1] is not last or last.activation is not None or not isinstance(last.layer, nn.Linear):
        raise UnsupportedModelError(
            "pepita applies the output error to the last layer directly, so the model must end with its "
            "output nn.Linear (logits, no activation or other module after it)")
