"""The UI learner as one job from a TOML file (``pocketlearn ui run examples/ui.toml``): crawl, then learn.

Everything lands in ``runs/<name>/``: the crops (``crops/``, resumed by a rerun), the federated model
(``model.pt``) and the curve (``ui-curve.json``, plotted by ``pocketlearn report runs/<name>``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pocketlearn.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrawlSection(_Section):
    apps: list[str] = []  # empty: every installed app (`pocketlearn ui apps`)
    pages: int = Field(3, ge=1)  # per app, breadth first from its start page
    screens: int = Field(2, ge=1)  # per page: its top, then scrolled a screen down each
    taps: int = Field(16, ge=1)  # per screen
    timeout_s: float = Field(5.0, gt=0)  # any one browser action; a hung browser is killed and restarted
    seed: int = 0


class LearnSection(_Section):
    devices: int = Field(4, ge=1)
    held_out: int = Field(3, ge=1)  # apps no device crawls: the scores are on them
    stages: int = Field(4, ge=1)
    rounds: int = Field(20, ge=1)  # per stage
    replay: int = Field(512, ge=1)  # crops a device keeps
    inverted: float = Field(0.5, ge=0, le=1)  # share of them kept colour-inverted (a dark theme of the same app)
    device: str = "phone-1g"
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # each device's local optimizer
    lr: float = Field(0.002, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd's
    secagg: bool = False
    noise_multiplier: float = Field(0.0, ge=0)  # > 0: DP-FedAvg
    seed: int = 0


class UIJob(_Section):
    name: str = "ui"
    crawl: CrawlSection = CrawlSection()
    learn: LearnSection = LearnSection()


def load_job(path: str | Path) -> UIJob:
    """A UI job from a TOML file, or a bundled example by name (``ui``); a wrong key is named in the error."""
    from pocketlearn.bundled import config_path

    path = config_path(path)
    try:
        return UIJob.model_validate(tomllib.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read the UI job {path}: {err}") from None
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid UI job {path}:\n" + "\n".join(lines)) from None
