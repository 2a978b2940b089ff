"""A run folder holds one run: its ``config.json`` says which, and a run of other settings is refused by key.

Without this check a second run of another config in the same folder (a run with ``checkpoint = false``, whose
folder has no checkpoint to compare) would replace the first one's ``config.json`` and metrics in place, and a
report of the folder would mix two runs. What may change between runs of one folder is what
:func:`pocketlearn.federated.server.fingerprint` leaves out: the number of rounds, the engine, checkpointing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import RunConfig, parse_config

# a run continued with more rounds, elsewhere, watched from another folder, is the same run
MAY_CHANGE = ("rounds", "engine", "checkpoint", "tracking.tensorboard")


def check_run_folder(config: RunConfig, run_dir: Path) -> None:
    """Raise :class:`ConfigError` naming each differing key when ``run_dir`` holds a run of other settings."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    way_out = "pass --fresh to replace that run, or give this one another name (--set name=...)"
    try:
        previous = parse_config(json.loads(path.read_text()), source=str(path))
    except (OSError, ValueError) as err:  # ConfigError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{run_dir} holds a run whose config.json cannot be read ({str(err).splitlines()[0]}); "
                          f"{way_out}") from None
    differing = config_differences(previous, config)
    if differing:
        shown = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differing.items())
        raise ConfigError(f"{run_dir} holds a run with other settings ({shown}); {way_out}")


def config_differences(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old value, new value) for every setting that differs, leaving out :data:`MAY_CHANGE`."""
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    keys = sorted((set(a) | set(b)) - set(MAY_CHANGE))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """``{"client": {"lr": 0.1}}`` -> ``{"client.lr": 0.1}``: sections flattened, a dict-valued key kept whole."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
