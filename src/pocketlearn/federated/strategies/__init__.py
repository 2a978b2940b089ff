"""Aggregation strategies, one file each, registered by name (the name a run config's ``[strategy]`` uses).

New strategy = a new file with a :class:`Strategy` dataclass + one line in ``_REGISTRY``. Options are the
dataclass's fields, as plain values::

    make_strategy("fedadam", lr=0.01, betas=[0.9, 0.99])
    make_strategy("norm-bounding", max_norm=1.0, inner="fedadam", lr=0.01)  # other options go to the inner one
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any

from pocketlearn.errors import ConfigError
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.strategies.fedavg import FedAvg
from pocketlearn.federated.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from pocketlearn.federated.strategies.fedprox import FedProx
from pocketlearn.federated.strategies.krum import Krum, MultiKrum
from pocketlearn.federated.strategies.robust import CoordinateMedian, NormBounding, TrimmedMean

_REGISTRY: dict[str, type[Strategy] | str] = {
    **{cls.name: cls
       for cls in (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, CoordinateMedian, TrimmedMean, NormBounding)},
    Krum.name: Krum,
    MultiKrum.name: MultiKrum,
    # imported on request: the privacy accountant (dp-accounting) costs ~0.5 s of start-up
    "dp-fedavg": "pocketlearn.federated.strategies.dp_fedavg:DPFedAvg",
}


def available_strategies() -> list[str]:
    return list(_REGISTRY)


def strategy_options(name: str) -> list[str]:
    """The option names of strategy ``name`` (norm-bounding passes any other option to its inner strategy)."""
    return sorted(f.name for f in fields(_strategy_class(name)) if f.init)  # type: ignore[arg-type]


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build strategy ``name`` from plain option values; a bad name, option or value is a ConfigError."""
    cls = _strategy_class(name)
    if cls is NormBounding:
        return _norm_bounding(options)
    _check_names(name, options, strategy_options(name))
    return cls(**options)


def _strategy_class(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {available_strategies()}")
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, cls_name = entry.split(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), cls_name)
    return entry


def _check_names(label: str, options: dict[str, Any], known: list[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"strategy {label} has no option {', '.join(map(repr, unknown))}; options are {known}")


def _norm_bounding(options: dict[str, Any]) -> NormBounding:
    inner = options.pop("inner", "fedavg")
    if inner not in _REGISTRY or inner == NormBounding.name:
        choices = [n for n in _REGISTRY if n != NormBounding.name]
        raise ConfigError(f"norm-bounding: unknown inner strategy {inner!r}; choose one of {choices}")
    own = {k: options.pop(k) for k in ("max_norm",) if k in options}
    if "max_norm" not in own:
        raise ConfigError("norm-bounding needs max_norm, the largest L2 norm a client update may have "
                          "(e.g. max_norm = 1.0)")
    _check_names(f"norm-bounding (inner {inner})", options, ["inner", "max_norm", *strategy_options(inner)])
    return NormBounding(own["max_norm"], inner=make_strategy(inner, **options))


__all__ = [
    "CoordinateMedian", "FedAdagrad", "FedAdam", "FedAvg", "FedOpt", "FedProx", "FedYogi", "Krum", "MultiKrum",
    "NormBounding", "Strategy", "TrimmedMean", "available_strategies", "make_strategy", "strategy_options",
]
