"""Your own model by import path, ``package.module:function``: a function that returns an ``nn.Module``.

The path is the model's name wherever a registered name goes (configs, ``--set``, checkpoints, fingerprints), so
a process that gets only the name (a memory measurement, the Flower apps, a device) builds the same model.
Shapes for planning come from attributes the returned module may carry: ``input_shape``, ``num_classes``,
``task`` ("classification" or "lm") and ``seq_len``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.models import ModelSpec

IMPORT_FORM = "'package.module:function' (a function returning an nn.Module)"


def is_import_path(name: str) -> bool:
    """``pkg.mod:fn`` (or ``pkg.mod:Class.fn``): dotted Python identifiers on both sides of one colon."""
    module, sep, attr = name.partition(":")
    return bool(sep) and all(part.isidentifier() for part in [*module.split("."), *attr.split(".")])


@functools.cache
def imported_spec(path: str) -> ModelSpec:
    """The spec of ``path``, its shapes read from one model built aside (cached: a command asks many times)."""
    factory = load_factory(path)
    with torch.random.fork_rng(devices=[]):  # the probe must not move the seeded stream a run builds from
        probe = built(path, factory)
    task = getattr(probe, "task", "classification")
    if task not in ("classification", "lm"):
        raise ConfigError(f"model {path!r}: its task attribute is {task!r}; use 'classification' or 'lm'")
    return ModelSpec(path, lambda: built(path, factory), cast(Literal["classification", "lm"], task),
                     tuple(getattr(probe, "input_shape", ())), int(getattr(probe, "num_classes", 0)),
                     int(getattr(probe, "seq_len", 0)), description=f"your model, built by {path}")


def load_factory(path: str) -> Callable[[], Any]:
    """The callable ``path`` names; each way it can be missing is a :class:`ConfigError` naming the path."""
    module_name, _, attr = path.partition(":")
    _search_current_directory()
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # a missing module, or an error inside the user's module while it imports
        raise ConfigError(f"model {path!r}: module {module_name!r} does not import ({type(err).__name__}: {err})"
                          ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {path!r}: {attr!r} is not callable (type {type(obj).__name__!r}); name a "
                          "function returning an nn.Module")
    return obj


def built(path: str, factory: Callable[[], Any]) -> nn.Module:
    """``factory()``, checked to be a module (else the error says what came back)."""
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {path!r}: calling it returned type {type(model).__name__!r}, not an nn.Module")
    return model


def _search_current_directory() -> None:
    """Import from the folder the command runs in, as ``python -m`` would (a console script's path lacks it).

    Appended, so an installed package is never shadowed; child processes get this ``sys.path`` (memory
    measurement) or ``PYTHONPATH`` (the Flower apps) from their parent.
    """
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
