"""LoRA: low-rank adapters on frozen weights (Hu et al., ICLR 2022), built with PEFT's own layers.

Each adapted layer computes ``W x + (alpha / rank) · B A x`` with ``W`` frozen, ``A`` (rank, in) and
``B`` (out, rank); ``B`` starts at zero, so the adapted model starts equal to the original. Only the
factors (and, if asked, the head and the biases) train, which makes them the natural federated update.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pocketlearn.errors import ConfigError
from pocketlearn.methods.base import (
    GradientConfig,
    GradientMethod,
    MethodConfig,
    freeze,
    head_module,
    weight_layers,
)
from pocketlearn.methods.bias import train_head
from pocketlearn.quant import BASES, Base, QuantLinear, quantize_base

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

# LoRA factors' parameter names, as PEFT's LoraLayer.adapter_layer_names has them (checked in the tests)
FACTORS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


@dataclass(frozen=True)
class LoraConfig(GradientConfig):
    rank: int = 8  # r: inner dimension of B A
    alpha: float = 16.0  # the adapters' output is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input
    # layer names, PEFT-style (a full name or a name's last parts: ("q_proj", "v_proj")); None = every
    # Linear/Conv1d/Conv2d layer except the output head
    target_modules: tuple[str, ...] | None = None
    train_head: bool = False  # also train the output layer fully (a new label set needs it)
    train_biases: bool = False  # also train every bias of the frozen layers
    checkpointing: bool = False  # recompute activations in backward: an LLM's activations dwarf its adapters
    train_a: bool = True  # False freezes A at its random init (FFA-LoRA): the update B A is then linear in B
    init_seed: int | None = None  # draw A from this seed (devices sharing it share A), else from torch's RNG
    base: Base = "fp32"  # how the frozen weights are stored: fp32, or block-quantized q4 / q8 (pocketlearn.quant)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list | str):  # from TOML / the CLI
            names = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
            object.__setattr__(self, "target_modules", tuple(names))
        super().__post_init__()

    def problems(self) -> list[str]:
        out = super().problems()
        out += lora_problems(self.rank, self.alpha) + base_problems(self.base)
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout should be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            out.append("target_modules is empty; leave it None to adapt every weight layer except the head")
        return out


def base_problems(base: str) -> list[str]:
    return [] if base in BASES else [f"base should be one of {sorted(BASES)}, got {base!r}"]


def lora_problems(rank: int, alpha: float) -> list[str]:
    """Check the settings of every config that injects adapters (LoRA, MeZO's ``subset="lora"``)."""
    out = [] if rank >= 1 else [f"rank should be >= 1, got {rank}"]
    return out + ([] if alpha > 0 else [f"alpha should be positive, got {alpha}"])


class LoRA(GradientMethod):
    """Low-rank adaptation (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022).

    Adapters come from PEFT (``peft.inject_adapter_in_model``) on every model, plain ``nn.Module`` or
    transformers. By default every Linear and Conv layer except the head is adapted: PEFT's Conv2d adapter
    is a k×k conv down to ``rank`` channels (A) and a 1×1 conv back up (B), and on CNNs the convs hold most
    weights. :func:`merge_lora` folds the trained adapters back into plain layers for export.
    """

    name = "lora"
    config: LoraConfig
    config_cls: ClassVar[type[MethodConfig]] = LoraConfig
    wire_kind = "lora"
    quality_rank = 20
    exportable = True

    @classmethod
    def plain_state(cls, model: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad():
            return super().plain_state(merge_lora(model))

    def select_trainable(self, model: nn.Module) -> nn.Module:
        freeze(model)
        if self.config.train_head:
            train_head(model)
        if self.config.train_biases:
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.requires_grad_(True)
        keep = [p for p in model.parameters() if p.requires_grad]  # PEFT freezes all but the adapters
        c = self.config
        quantize_base(model, c.base)  # trainable layers (a trained head) stay fp32
        with torch.random.fork_rng(devices=[], enabled=c.init_seed is not None):
            if c.init_seed is not None:
                torch.manual_seed(c.init_seed)
            self.targets = inject_lora(model, rank=c.rank, alpha=c.alpha, dropout=c.dropout,
                                       target_modules=c.target_modules)
        if not c.train_a:
            for name, factor in lora_parameters(model).items():
                if ".lora_A." in name:
                    factor.requires_grad_(False)
        for p in keep:
            p.requires_grad_(True)
        if c.checkpointing:
            from pocketlearn.methods.backprop import enable_checkpointing

            enable_checkpointing(model)
        return model


def inject_lora(model: nn.Module, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                target_modules: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Add PEFT LoRA adapters to ``model`` in place; return the names of the adapted layers.

    ``target_modules`` follows PEFT (a full module name, or its last dotted parts); None adapts every
    Linear/Conv1d/Conv2d layer except the output head. Adapter parameters are left trainable, the rest frozen.
    """
    from pocketlearn.extras import require

    require("peft")  # the llm extra
    import peft

    if lora_layers(model):
        raise ConfigError("the model already has LoRA adapters; train those, or merge_lora(model) first")
    targets: str | list[str] = list(target_modules) if target_modules is not None else default_targets(model)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT says int; any scale works
                             lora_dropout=dropout, target_modules=targets)
    config._register_custom_module({QuantLinear: _quant_lora_linear()})  # its forward calls the base layer
    try:
        with warnings.catch_warnings():  # PEFT warns about QuantLinear, a layer registered above
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            peft.inject_adapter_in_model(config, model)
    except ValueError as e:
        layers = [n for n, _ in weight_layers(model)]
        raise ConfigError(f"LoRA: target_modules {target_modules} match no supported layer ({e}); "
                          f"the model's weight layers are {layers}") from e
    return list(lora_layers(model))


@cache
def _quant_lora_linear() -> type:
    """PEFT's LoRA Linear over a :class:`QuantLinear`, with the adapter added in one fused ``addmm``.

    PEFT computes ``result + lora_B(lora_A(x)) * scaling``: two extra passes over the layer's output, ~20% of
    a 4-bit SmolLM2 forward pass (which MeZO makes twice per step). One plain adapter (no dropout, no DoRA)
    takes the fused path; anything else goes through PEFT's own forward.
    """
    import peft

    class QuantLoraLinear(peft.tuners.lora.Linear):
        def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
            active = self.active_adapters
            if (self.disable_adapters or self.merged or args or kwargs or len(active) != 1 or active[0] in
                    self.lora_variant or active[0] not in self.lora_A or
                    not isinstance(self.lora_dropout[active[0]], nn.Identity)):
                return super().forward(x, *args, **kwargs)
            name = active[0]
            result = self.base_layer(x)
            low = F.linear(x, factor_weight(self, "lora_A", name)).reshape(-1, self.r[name])
            fused = torch.addmm(result.reshape(-1, result.shape[-1]), low, factor_weight(self, "lora_B", name).t(),
                                alpha=self.scaling[name])
            return fused.view(result.shape)

    return QuantLoraLinear


def default_targets(model: nn.Module) -> str:
    """Return a regex (PEFT full-matches it) that names every Linear/Conv layer but the head, exactly.

    Left out: grouped (depthwise) convs, whose per-channel kernels have no low-rank factor to learn (PEFT
    needs the rank divisible by the groups), and convs that pad their input themselves (TF-"same") unless
    1x1 with stride 1, since PEFT's adapter conv would not see that padding.
    """
    head = head_module(model)
    layers = [*weight_layers(model), *((n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear))]
    names = [n for n, m in layers if (head is None or n != head[0]) and _adaptable(m)]
    if not names:
        raise ConfigError("LoRA: the model has no Linear/Conv layer besides its output head to adapt; "
                          "pass target_modules explicitly")
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _adaptable(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.Conv2d):
        return True
    pointwise = layer.kernel_size == (1, 1) and layer.stride == (1, 1)
    return layer.groups == 1 and (pointwise or not hasattr(layer, "pad_input"))


def factor_weight(layer: LoraLayer, factor: str, adapter: str = "default") -> Tensor:
    """The weight of an adapter's ``lora_A`` or ``lora_B`` (an nn.Linear without bias)."""
    weight = getattr(layer, factor)[adapter].weight
    assert isinstance(weight, Tensor), f"LoRA {factor}[{adapter}] is a layer with a weight tensor"
    return weight


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Return the adapted layers by name, in registration order (none where PEFT was never imported)."""
    if "peft" not in sys.modules:
        return {}
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Return the adapter factors by name: ``…lora_A.default.weight`` (rank, in), ``…lora_B…`` (out, rank)."""
    return {n: p for n, p in model.named_parameters() if set(FACTORS) & set(n.split("."))}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain layers back, in place.

    PEFT's ``merge`` does W += (alpha / rank) · B A. Returns the same model, now without adapters (a method
    built on it cannot go on training it).
    """
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("merge_lora: the model has no LoRA adapters; wrap it with the 'lora' method first")
    for name, layer in layers.items():
        if isinstance(layer.base_layer, QuantLinear):  # merge into the dequantized weight
            layer.base_layer = layer.base_layer.dequantized()
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
