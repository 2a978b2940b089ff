"""Pretrain a base HAR model on some users, then personalise it on each other user's own device.

Each personalising user adapts the base model on the first part of their own windows with one training
method and is scored on their later windows. Before training, the method's measured step peak is checked
against the device budget: a method that does not fit is reported with the bytes it needs and not run.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from pocketlearn.apps.har.data import HarSplit, UserData, split_users
from pocketlearn.apps.har.memory import Fit, PeakCache
from pocketlearn.apps.har.models import har_model
from pocketlearn.errors import ConfigError, TrainingError

SGD = {"lr": 0.01, "momentum": 0.9}
# Options per method for a few epochs on ~150 windows of one user (chosen on users 21-29, hapt-mlp and har-tiny):
# small steps, since the base model is already ~95% right and larger ones forget it. hapt-mlp has one hidden
# layer, so "sparse" trains the head and every bias (last_k=1) and "binary" binarises both layers.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "backprop": {**SGD, "lr": 0.005},
    "bias": {**SGD, "train_head": True},
    "sparse": {**SGD, "last_k": 1},
    "lora": {**SGD, "lr": 0.005, "rank": 4, "alpha": 4.0, "train_head": True},
    "mezo": {"lr": 5e-4, "eps": 1e-3},
    "binary": {"lr": 0.001, "keep_first_last_real": False},
}
DEFAULT_METHODS = ("backprop", "bias", "sparse", "lora", "mezo", "binary")


@dataclass(frozen=True)
class PersonalizeConfig:
    """Who pretrains, who personalises, with what, and under which budget."""

    pretrain_users: tuple[int, ...] = tuple(range(1, 21))
    users: tuple[int, ...] = tuple(range(21, 31))
    adapt_fraction: float = 0.5  # a user adapts on this first share of their windows, is scored on the rest
    split_by: Literal["bout", "user"] = "bout"  # first part of every activity bout, or of all (other placement)
    methods: tuple[str, ...] = DEFAULT_METHODS
    models: tuple[str, ...] = ("hapt-mlp", "har-tiny")
    device: str | None = None  # only methods whose measured step fits this device's budget are run
    batch_size: int = 16
    epochs: int = 5
    mezo_epochs: int = 20  # zeroth-order steps are cheap and weak: more of them
    pretrain_epochs: int = 8
    pretrain_limit: int | None = None  # pretraining windows (None: all of them)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHOD_OPTIONS))
        if unknown:
            raise ConfigError(f"no HAR settings for methods {unknown}; choose from {sorted(METHOD_OPTIONS)}")
        if not self.users:
            raise ConfigError("no users to personalise; pass at least one user id (1-30) not used for pretraining")
        if self.device:
            from pocketlearn.devices import get_device

            get_device(self.device)  # an unknown device fails here, before minutes of pretraining


@dataclass
class UserResult:
    user: int
    model: str
    method: str
    before: float  # base model's accuracy on the user's later windows
    after: float | None  # None when not run (does not fit) or diverged
    adapt_windows: int
    test_windows: int
    note: str = ""  # why there is no "after"


@dataclass
class HarResult:
    config: dict[str, Any]
    pretrain_accuracy: dict[str, float]  # per model, on the pretraining windows
    peaks: dict[str, dict[str, int | None]]  # model -> method -> measured step peak ("inference" included)
    fits: list[dict[str, Any]]  # per (model, method, device)
    users: list[UserResult] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        """Mean accuracy before/after per (model, method) and how many users improved."""
        out = []
        for model in self.config["models"]:
            for method in self.config["methods"]:
                rows = [u for u in self.users if u.model == model and u.method == method]
                done = [(u.before, u.after) for u in rows if u.after is not None]
                out.append({"model": model, "method": method, "users": len(rows),
                            "before": statistics.mean(u.before for u in rows) if rows else None,
                            "after": statistics.mean(after for _, after in done) if done else None,
                            "improved": sum(after > before for before, after in done),
                            "peak_bytes": self.peaks.get(model, {}).get(method)})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "pretrain_accuracy": self.pretrain_accuracy, "peaks": self.peaks,
                "fits": self.fits, "users": [asdict(u) for u in self.users], "summary": self.summary()}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from pocketlearn.evaluate import batches_of, evaluate

    return evaluate(model, batches_of(x, y, 512))["accuracy"] if len(y) else float("nan")


def pretrain(split: HarSplit, model: str, config: PersonalizeConfig) -> nn.Module:
    """Central backprop on the pretraining users' windows (the 'cloud' model every phone starts from)."""
    from pocketlearn.methods import make_method
    from pocketlearn.trainer import LocalTrainer, TrainerConfig

    torch.manual_seed(config.seed)
    net = har_model(model)()
    x, y = split.x_pretrain, split.y_pretrain
    if config.pretrain_limit is not None:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed))[: config.pretrain_limit]
        x, y = x[keep], y[keep]
    method = make_method("backprop", net, lr=0.02, momentum=0.9)
    LocalTrainer(method, TrainerConfig(epochs=config.pretrain_epochs, batch_size=64, seed=config.seed)).fit(x, y)
    return method.model


def personalize_user(base: nn.Module, user: UserData, method: str, config: PersonalizeConfig,
                     options: dict[str, Any] | None = None) -> float:
    """Adapt a copy of ``base`` on the user's first windows; accuracy on their later windows."""
    from pocketlearn.methods import make_method
    from pocketlearn.trainer import LocalTrainer, TrainerConfig

    torch.manual_seed(config.seed)
    trainer = make_method(method, copy.deepcopy(base), **(options if options is not None else METHOD_OPTIONS[method]))
    epochs = config.mezo_epochs if method == "mezo" else config.epochs
    LocalTrainer(trainer, TrainerConfig(epochs=epochs, batch_size=config.batch_size, seed=config.seed + user.user)
                 ).fit(user.x_adapt, user.y_adapt)
    return accuracy(trainer.model, user.x_test, user.y_test)


def run_personalization(config: PersonalizeConfig, *, peaks: PeakCache | None = None,
                        devices: tuple[str, ...] = ("mcu-512k", "pi-zero-512m", "phone-1g"),
                        on_progress: Callable[[str], None] | None = None) -> HarResult:
    """Pretrain each model variant, measure each method once, personalise every user with every method that fits."""
    from pocketlearn.devices import get_device

    note = on_progress or (lambda _msg: None)
    peaks = peaks or PeakCache()
    split = split_users(config.pretrain_users, config.users, adapt_fraction=config.adapt_fraction,
                        by=config.split_by)
    budget = get_device(config.device) if config.device else None
    shown = tuple(dict.fromkeys(((config.device,) if config.device else ()) + devices))
    result = HarResult(asdict(config), {}, {}, [])
    for model in config.models:
        note(f"{model}: measuring")
        result.peaks[model] = {"inference": peaks.peak(model, "inference", config.batch_size, {})}
        fits: dict[str, Fit] = {}
        for method in config.methods:
            opts = METHOD_OPTIONS[method]
            result.peaks[model][method] = peaks.peak(model, method, config.batch_size, opts)
            for name in shown:
                fit = peaks.fit(model, method, config.batch_size, opts, get_device(name))
                result.fits.append(asdict(fit) | {"fits": fit.fits, "text": fit.describe()})
                if budget is not None and name == budget.name:
                    fits[method] = fit
        note(f"{model}: pretraining on users {config.pretrain_users[0]}-{config.pretrain_users[-1]}")
        base = pretrain(split, model, config)
        result.pretrain_accuracy[model] = accuracy(base, split.x_pretrain, split.y_pretrain)
        for user in config.users:
            data = split.users[user]
            before = accuracy(base, data.x_test, data.y_test)
            for method in config.methods:
                why = ""
                if result.peaks[model][method] is None:
                    why = "not applicable"
                elif budget is not None and not fits[method].fits:
                    why = fits[method].describe()
                note(f"{model}: user {user}, {method}")
                after = None
                if not why:
                    try:
                        after = personalize_user(base, data, method, config)
                    except TrainingError as err:
                        why = f"diverged: {err}"
                result.users.append(UserResult(user, model, method, before, after, len(data.y_adapt),
                                               len(data.y_test), why))
    return result
