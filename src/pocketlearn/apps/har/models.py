"""Model variants for on-device activity recognition, by name.

``hapt-mlp`` (768-256-12, 200k parameters, 0.8 MB of fp32 weights) cannot even hold its weights in a 512 KiB
microcontroller, so the MCU gets ``har-tiny`` (768-24-12, 19k parameters, 75 kB). Factories are module-level
functions so :func:`pocketlearn.memory.measure` can rebuild them in a fresh process by qualified name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.models.small import mlp

NUM_CLASSES = 12
IN_FEATURES = 6 * 128  # six channels x 2.56 s at 50 Hz


def hapt_mlp() -> nn.Sequential:
    """The registered ``hapt-mlp``: 768-256-12."""
    return mlp(IN_FEATURES, (256,), NUM_CLASSES)


def har_tiny() -> nn.Sequential:
    """768-24-12: small enough that a training step of the cheap methods fits a 512 KiB MCU."""
    return mlp(IN_FEATURES, (24,), NUM_CLASSES)


HAR_MODELS: dict[str, Callable[[], nn.Module]] = {"hapt-mlp": hapt_mlp, "har-tiny": har_tiny}


def har_model(name: str) -> Callable[[], nn.Module]:
    """The factory of a HAR model variant."""
    if name not in HAR_MODELS:
        raise ConfigError(f"unknown HAR model {name!r}; choose one of {sorted(HAR_MODELS)}")
    return HAR_MODELS[name]
