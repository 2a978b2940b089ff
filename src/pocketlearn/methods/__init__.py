"""Ways of computing an update, one file each, registered by name.

New method = a new file with a :class:`TrainingMethod` subclass + one line in ``_REGISTRY``; what the rest of
pocketlearn needs to know about it (its wire kind, planner rank, export, ...) are that class's attributes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.methods.base import (
    Batch,
    GradientConfig,
    GradientMethod,
    LossFn,
    MemoryTraits,
    MethodConfig,
    TrainingMethod,
    cross_entropy,
)

_REGISTRY: dict[str, str] = {
    "backprop": "pocketlearn.methods.backprop:Backprop",
    "bias": "pocketlearn.methods.bias:BiasOnly",
    "tinytl": "pocketlearn.methods.tinytl:TinyTL",
    "sparse": "pocketlearn.methods.sparse:SparseUpdate",
    "lora": "pocketlearn.methods.lora:LoRA",
    "mezo": "pocketlearn.methods.mezo:MeZO",
    "pepita": "pocketlearn.methods.pepita:Pepita",
    "binary": "pocketlearn.methods.binary:BinaryWeights",
}


def available_methods() -> list[str]:
    return list(_REGISTRY)


def get_method_class(name: str) -> type[TrainingMethod]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown training method {name!r}; choose one of {available_methods()}")
    module_name, class_name = _REGISTRY[name].split(":")
    cls: type[TrainingMethod] = getattr(importlib.import_module(module_name), class_name)
    return cls


def methods_where(fact: Callable[[type[TrainingMethod]], bool]) -> list[str]:
    """The registered methods whose class has ``fact``, in registry order: every table of method facts.

    Imports each method's module (torch only: PEFT is imported when a LoRA model is built).
    """
    return [name for name in _REGISTRY if fact(get_method_class(name))]


def make_method(name: str, model: nn.Module, *, loss_fn: LossFn = cross_entropy, **options: Any) -> TrainingMethod:
    """Wrap ``model`` for training with method ``name``; ``options`` are the method's config fields."""
    cls = get_method_class(name)
    return cls(model, cls.config_cls.from_dict(options), loss_fn=loss_fn)


__all__ = [
    "Batch", "GradientConfig", "GradientMethod", "LossFn", "MemoryTraits", "MethodConfig", "TrainingMethod",
    "available_methods", "cross_entropy", "get_method_class", "make_method", "methods_where",
]
