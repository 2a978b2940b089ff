"""Never-ending learning of tappability from crawled crops: each device learns from its own apps, federated.

Time runs in stages: at each stage every device has crawled a little more of its apps (its crops in crawl order,
cut into ``stages`` equal parts), adds the new crops to a bounded replay buffer (a uniform sample of all it has
seen), and the devices run ``rounds`` federated rounds (the existing round: FedAvg, the planner's method for
the device profile, secure aggregation and DP as options) from where the last stage stopped. Only updates leave
a device. Scored on apps no device crawled, from pixels alone, against:
- each device alone (the same schedule on its own buffer only), averaged over devices;
- one model on every device's buffer pooled (what a system that collects screenshots would get);
- a rule with no learning: the DOM says link or form control (it sees the DOM, the model only pixels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pocketlearn.apps.ui.dataset import CropStore, PageCrops
from pocketlearn.errors import ConfigError

SIDE = 32  # the model's input: crops resized to SIDE x SIDE
INPUTS = "centred"  # how model_input scales a crop; a model saved for other inputs is refused (see predict)


@dataclass(frozen=True)
class LearnSettings:
    stages: int = 4  # crawl increments; the curve is scored after each
    rounds: int = 20  # federated rounds per stage
    replay: int = 512  # crops a device keeps (a uniform sample of all it crawled)
    inverted: float = 0.5  # share of the crops a device keeps colour-inverted: the same interface in a dark theme
    device: str = "phone-1g"  # the device profile every device has (the planner picks the method)
    epochs: int = 2
    batch_size: int = 16
    optimizer: str = "adamw"  # each device's local optimizer: "adamw" or "sgd" (with ``momentum``)
    lr: float = 0.002
    momentum: float = 0.0
    seed: int = 0
    secagg: bool = False
    noise_multiplier: float = 0.0  # > 0: DP-FedAvg (clip 1.0)

    def __post_init__(self) -> None:
        if min(self.stages, self.rounds, self.replay, self.epochs, self.batch_size) < 1 or self.lr <= 0:
            raise ConfigError(f"learn settings need stages, rounds, replay, epochs, batch size >= 1 and lr > 0: {self}")
        if not 0 <= self.inverted <= 1:
            raise ConfigError(f"learn.inverted is a share of the crops, from 0 to 1; got {self.inverted}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"learn.optimizer should be 'adamw' or 'sgd', got {self.optimizer!r}")


@dataclass
class Scores:
    precision: float
    recall: float
    f1: float
    auc: float


@dataclass
class StageResult:
    stage: int
    crops_seen: int  # over all devices, this far
    federated: Scores
    alone: Scores  # mean over devices
    pooled: Scores
    method: str = ""
    bytes_per_client_round: float = 0.0


def model_input(crops: np.ndarray) -> Tensor:
    """Stored crops (N, S, S, 3) uint8 as the model's input: (N, 3, SIDE, SIDE), centred on mid-grey.

    Pages are mostly white: inputs in [0, 1] put every first-layer unit on the same side of zero, and a model
    trained on the pooled crops with SGD died (all units off, AUC 0.5) in one run out of three.
    """
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != SIDE:
        x = torch.nn.functional.interpolate(x, size=(SIDE, SIDE), mode="bilinear", antialias=True,
                                            align_corners=False)
    return ((x - 0.5) / 0.25).contiguous()


def tensors(pages: Sequence[PageCrops]) -> tuple[Tensor, Tensor]:
    """Crops as the model's input and labels as (N,) long (1: the tap changed the screen)."""
    if not pages:
        return torch.zeros(0, 3, SIDE, SIDE), torch.zeros(0, dtype=torch.long)
    return (model_input(np.concatenate([p.crops for p in pages])),
            torch.from_numpy(np.concatenate([p.labels for p in pages])).long())


def scores(prob: np.ndarray, truth: np.ndarray) -> Scores:
    """Precision, recall and F1 at 0.5, and the ROC AUC (rank statistic, ties averaged)."""
    pred, truth = prob >= 0.5, truth.astype(bool)
    tp = float((pred & truth).sum())
    precision = tp / pred.sum() if pred.sum() else 0.0
    recall = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    pos, neg = int(truth.sum()), int((~truth).sum())
    if pos and neg:
        order = np.argsort(prob, kind="mergesort")
        ranks = np.empty(len(prob))
        ranks[order] = np.arange(1, len(prob) + 1)
        for value in np.unique(prob):  # ties share their mean rank
            tied = prob == value
            ranks[tied] = ranks[tied].mean()
        auc = (ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg)
    else:
        auc = float("nan")
    return Scores(precision, recall, f1, float(auc))


def rule_scores(pages: Sequence[PageCrops]) -> Scores:
    """The no-learning rule: tappable where the DOM says link or form control (ARIA roles of controls included)."""
    control = np.concatenate([p.control for p in pages]).astype(float)
    return scores(control, np.concatenate([p.labels for p in pages]))


class ReplayBuffer:
    """At most ``size`` crops: a uniform sample of every crop added so far (reservoir sampling).

    A share ``inverted`` of the crops is kept colour-inverted (negated: the inputs are centred on mid-grey).
    Interfaces come in light and dark themes (Node.js's documentation, code blocks, dashboards' dark modes), and a
    link or a button stays one when its colours are inverted: on the benchmark's held-out apps this raised the
    federated F1 by 3 to 6 points, at no cost in memory or steps.
    """

    def __init__(self, size: int, seed: int, inverted: float = 0.0):
        self.size, self.rng, self.seen, self.inverted = size, np.random.default_rng(seed), 0, inverted
        self.x: Tensor | None = None
        self.y: Tensor | None = None

    def add(self, x: Tensor, y: Tensor) -> None:
        if self.inverted:
            flip = torch.from_numpy(self.rng.random(len(y)) < self.inverted)
            x = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), -x, x)
        for i in range(len(y)):
            self.seen += 1
            if self.x is None or self.y is None or len(self.y) < self.size:
                self.x = x[i:i + 1] if self.x is None else torch.cat([self.x, x[i:i + 1]])
                self.y = y[i:i + 1] if self.y is None else torch.cat([self.y, y[i:i + 1]])
            elif (j := int(self.rng.integers(self.seen))) < self.size:
                self.x[j], self.y[j] = x[i], y[i]

    def data(self) -> tuple[Tensor, Tensor]:
        if self.x is None or self.y is None:
            return torch.zeros(0, 3, SIDE, SIDE), torch.zeros(0, dtype=torch.long)
        return self.x, self.y


def device_timeline(store: CropStore, apps: Sequence[str], stages: int) -> list[tuple[Tensor, Tensor]]:
    """A device's crops, app after app and page after page, cut into ``stages`` equal parts: each stage's crawl."""
    x, y = tensors([p for app in apps for p in store.pages([app])])
    cuts = np.linspace(0, len(y), stages + 1).round().astype(int)
    return [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _run_config(settings: LearnSettings, clients: int) -> Any:
    from pocketlearn.federated.config import parse_config

    strategy: dict[str, Any] = {"name": "fedavg"}
    if settings.noise_multiplier > 0:
        dp = {"clip": 1.0, "noise_multiplier": settings.noise_multiplier}
        strategy = {"name": "dp-fedavg", "options": {"dp": dp}}
    return parse_config({
        "name": "ui", "rounds": settings.rounds, "clients_per_round": clients, "seed": settings.seed,
        "checkpoint": False, "model": {"name": "ui-cnn"},
        "data": {"name": "ui", "partition": "iid", "num_clients": clients},
        "client": {"method": "backprop", "epochs": settings.epochs, "batch_size": settings.batch_size,
                   "lr": settings.lr, "momentum": settings.momentum, "options": {"optimizer": settings.optimizer}},
        "devices": {"mix": {settings.device: 1.0}, "availability": False},
        "strategy": strategy, "secagg": {"enabled": settings.secagg and clients > 1, "clip": 1.0},
        "eval": {"every": settings.rounds},
    }, source="the UI learner's settings")


class Learner:
    """One model trained by federated rounds over some clients' buffers; continues from stage to stage."""

    def __init__(self, settings: LearnSettings, clients: int):
        self.settings, self.config = settings, _run_config(settings, clients)
        self.params: dict[str, Tensor] | None = None
        self.model: torch.nn.Module | None = None
        self.method, self.bytes_per_client_round = "", 0.0

    def stage(self, buffers: Sequence[tuple[Tensor, Tensor]], x_test: Tensor) -> np.ndarray:
        """Run this stage's rounds on ``buffers`` (one per client); the tappable probability of each test crop."""
        from pocketlearn.federated.clients import InMemoryClients
        from pocketlearn.federated.experiment import FederatedData, build_server

        x = torch.cat([b[0] for b in buffers])
        y = torch.cat([b[1] for b in buffers])
        bounds = np.cumsum([0] + [len(b[1]) for b in buffers])
        clients = InMemoryClients(x, y, [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        server, _ = build_server(self.config, None, data=FederatedData(clients, x_test[:1], torch.zeros(1).long()))
        if self.params is not None:
            with torch.no_grad():
                for name, p in server.params.items():
                    p.copy_(self.params[name])
        records = server.run(self.settings.rounds)
        self.params = {n: p.detach().clone() for n, p in server.params.items()}
        self.method = ",".join(sorted({f.method or "-" for f in server.clients.fits}))
        self.bytes_per_client_round = sum(r.bytes_up for r in records) / max(1, sum(r.finished for r in records))
        self.model = copy.deepcopy(server.model).eval()
        return tappable(self.model, x_test)

    def model_state(self) -> dict[str, Tensor]:
        assert self.model is not None, "a learner has a model once it ran a stage"
        return {n: t.detach().clone() for n, t in self.model.state_dict().items()}


def tappable(model: torch.nn.Module, x: Tensor) -> np.ndarray:
    """The model's probability that each crop (N, 3, SIDE, SIDE) is tappable."""
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=1)[:, 1].numpy()


@dataclass
class Curve:
    """Scores after each stage, the no-learning rule's, and the federated model after the last stage."""

    stages: list[StageResult]
    rule: Scores
    model: dict[str, Tensor]  # a ``ui-cnn`` state dict


def learn(store: CropStore, device_apps: Sequence[Sequence[str]], held_out: Sequence[str],
          settings: LearnSettings = LearnSettings(),
          on_stage: Callable[[StageResult], None] | None = None) -> Curve:
    """The curve over stages (federated, alone, pooled) on the held-out apps, and the rule's scores there."""
    test_pages = [p for app in held_out for p in store.pages([app])]
    x_test, y_test = tensors(test_pages)
    if not len(y_test):
        raise ConfigError(f"the held-out apps {list(held_out)} have no crawled crops; crawl them first")
    truth = y_test.numpy()
    timelines = [device_timeline(store, apps, settings.stages) for apps in device_apps]
    buffers = [ReplayBuffer(settings.replay, settings.seed * 1000 + d, settings.inverted)
               for d in range(len(device_apps))]
    federated, pooled = Learner(settings, len(device_apps)), Learner(settings, 1)
    alone = [Learner(settings, 1) for _ in device_apps]
    results = []
    for stage in range(settings.stages):
        for buffer, timeline in zip(buffers, timelines, strict=True):
            buffer.add(*timeline[stage])
        data = [b.data() for b in buffers]
        if any(not len(y) for _, y in data):
            raise ConfigError(f"stage {stage + 1}: a device has crawled no crops yet; crawl more pages of its apps "
                              "or use fewer stages")
        fed = scores(federated.stage(data, x_test), truth)
        pool = scores(pooled.stage([(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))], x_test),
                      truth)
        each = [scores(learner.stage([d], x_test), truth) for learner, d in zip(alone, data, strict=True)]
        mean = Scores(*(float(np.nanmean([getattr(s, f) for s in each])) for f in ("precision", "recall", "f1", "auc")))
        result = StageResult(stage + 1, sum(b.seen for b in buffers), fed, mean, pool, federated.method,
                             federated.bytes_per_client_round)
        results.append(result)
        if on_stage:
            on_stage(result)
    return Curve(results, rule_scores(test_pages), federated.model_state())
