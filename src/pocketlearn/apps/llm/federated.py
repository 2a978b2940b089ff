"""Federated fine-tuning of an LLM across Shakespeare users, on pocketlearn's federated engine.

Three modes, one server (:class:`pocketlearn.federated.server.FederatedServer`) built from its parts:

- ``fedit``: every client trains LoRA adapters with AdamW and the server averages them (FedIT: Zhang et al.,
  "Towards Building the Federated GPT: Federated Instruction Tuning", ICASSP 2024).
- ``mezo``: clients run MeZO on the adapters and upload only their (seed, projected-gradient) pairs; the
  server replays them (FedKSeed: Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language
  Models with Communication Cost under 18 Kilobytes", ICML 2024). Kilobytes up instead of megabytes.
- ``portion``: each device class trains only the adapters of its top blocks (``top_layers``); each adapter is
  averaged over the clients that trained it.

``pocketlearn.federated.experiment.build_server`` takes its data from a registry of data set names; the
SmolLM2-tokenized users are built here instead, so the server is assembled from the same pieces it uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pocketlearn.apps.llm.data import Tokenizer, largest_users, tokenize_user
from pocketlearn.apps.llm.methods import CHOICES
from pocketlearn.apps.llm.portion import PortionEngine, Targets, top_block_targets
from pocketlearn.devices import DeviceProfile, format_bytes
from pocketlearn.errors import BudgetError, Validated
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.federated.clients import InMemoryClients
from pocketlearn.federated.codecs import make_codec
from pocketlearn.federated.experiment import FederatedData
from pocketlearn.federated.population import DeviceFit, assign_devices, train_flops_per_sample
from pocketlearn.federated.sampling import ClientSampler
from pocketlearn.federated.server import Clients, FederatedServer, RoundPolicy, RoundRecord, fingerprint
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.federated.strategies import make_strategy
from pocketlearn.memory.estimate import estimate
from pocketlearn.methods import make_method

Mode = Literal["fedit", "mezo", "portion"]
MODE_CHOICE: dict[str, str] = {"fedit": "lora", "mezo": "mezo", "portion": "lora"}


@dataclass(frozen=True)
class FederatedLLMConfig(Validated):
    """A federated fine-tuning run: who takes part, how each client trains, and for how long."""

    mode: Mode = "fedit"
    users: int = 6  # the largest Shakespeare roles, one client each
    clients_per_round: int = 3
    rounds: int = 5
    seq_len: int = 64
    windows_per_user: int = 8  # training windows each client holds (spread over its train lines)
    test_windows_per_user: int = 4  # held-out windows of each user (its last lines), pooled for evaluation
    batch_size: int = 4
    epochs: int = 1  # local passes over its windows per round
    lr: float | None = None  # None: the mode's method default (pocketlearn.apps.llm.methods.CHOICES)
    options: dict[str, Any] = field(default_factory=dict)  # extra method options
    devices: dict[str, float] = field(default_factory=lambda: {"laptop-16g": 1.0})  # device -> share of clients
    device_profiles: str | None = None  # a TOML file of extra device profiles ([devices.NAME] tables)
    top_layers: dict[str, int] = field(default_factory=dict)  # portion: device -> top blocks it trains (else all)
    seed: int = 0

    def problems(self) -> list[str]:
        out = [f"{k} should be >= 1, got {v}" for k, v in asdict(self).items()
               if k in ("users", "clients_per_round", "rounds", "seq_len", "windows_per_user",
                        "test_windows_per_user", "batch_size", "epochs") and v < 1]
        if self.mode not in MODE_CHOICE:
            out.append(f"mode should be one of {sorted(MODE_CHOICE)}, got {self.mode!r}")
        if self.clients_per_round > self.users:
            out.append(f"clients_per_round ({self.clients_per_round}) exceeds users ({self.users})")
        if self.top_layers and self.mode != "portion":
            out.append("top_layers only applies to mode='portion'")
        if stray := sorted(set(self.top_layers) - set(self.devices)):
            out.append(f"top_layers names devices {stray} that are not in devices {sorted(self.devices)}")
        return out


@dataclass(frozen=True)
class RoundPoint:
    round: int
    perplexity: float
    bytes_up: int  # all clients of the round together, from the serialized payloads
    bytes_up_per_client: float
    clients: int
    seconds: float


@dataclass(frozen=True)
class FederatedReport:
    mode: str
    users: tuple[str, ...]
    trainable_params: int
    points: tuple[RoundPoint, ...]  # round 0 is the model before any round

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "users": list(self.users), "trainable_params": self.trainable_params,
                "rounds": [asdict(p) for p in self.points]}


def federated_users(tokenizer: Tokenizer, config: FederatedLLMConfig) -> FederatedData:
    """The ``config.users`` largest roles as clients, with each one's held-out windows pooled as the test set."""
    xs, ys, xts, yts, indices, names = [], [], [], [], [], []
    start = 0
    for role in largest_users(config.users):
        user = tokenize_user(role, tokenizer, seq_len=config.seq_len, max_train_windows=config.windows_per_user,
                             max_test_windows=config.test_windows_per_user)
        xs.append(user.x)
        ys.append(user.y)
        xts.append(user.x_test)
        yts.append(user.y_test)
        indices.append(np.arange(start, start + len(user.x)))
        names.append(user.name)
        start += len(user.x)
    return FederatedData(InMemoryClients(torch.cat(xs), torch.cat(ys), indices), torch.cat(xts), torch.cat(yts), names)


def local_training(config: FederatedLLMConfig, model: nn.Module | None = None) -> LocalTraining:
    choice = CHOICES[MODE_CHOICE[config.mode]]
    options = choice.with_overrides(config.lr, config.options, model)
    lr = float(options.pop("lr"))
    return LocalTraining(choice.method, config.epochs, config.batch_size, lr, options=tuple(sorted(options.items())),
                         shuffle_seed=config.seed + 2)


def _fits(template: nn.Module, config: FederatedLLMConfig, local: LocalTraining, devices: list[DeviceProfile],
          example: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[DeviceFit], list[Targets]]:
    """Estimate each device class's step (its portion of the adapters, in portion mode) against its budget."""
    fits, targets = [], []
    for device in devices:
        k = config.top_layers.get(device.name) if config.mode == "portion" else None
        chosen = top_block_targets(template, k) if k is not None else None
        options: dict[str, Any] = local.method_options() | ({"target_modules": chosen} if chosen else {})
        need = estimate(make_method(local.method, copy.deepcopy(template), **options), example).total
        ok = need <= device.memory_budget_bytes
        note = "" if ok else f"needs ~{format_bytes(need)}, has {format_bytes(device.memory_budget_bytes)}"
        fits.append(DeviceFit(device, local.method if ok else None, need, note))
        targets.append(chosen)
    if not any(f.method for f in fits):
        raise BudgetError("no device class can train: " + "; ".join(f"{f.device.name} {f.note}" for f in fits)
                          + ". Add a larger device to devices, or (mode='portion') give it fewer top_layers.")
    return fits, targets


def build_llm_server(template: nn.Module, data: FederatedData, config: FederatedLLMConfig) -> FederatedServer:
    """A :class:`FederatedServer` whose clients fine-tune ``template`` (left untouched) on their users' text."""
    local = local_training(config, template)
    torch.manual_seed(config.seed)
    options: dict[str, Any] = local.method_options()
    method = make_method(local.method, copy.deepcopy(template), **options)  # the global model
    n = len(data.clients)
    devices, device_index = assign_devices(n, config.devices, config.seed + 3, config.device_profiles)
    x, y = data.clients.example(config.batch_size)
    example = (x.clone(), y.clone())
    fits, targets = _fits(template, config, local, devices, example)
    sampler = ClientSampler(n, config.clients_per_round, seed=config.seed + 1,
                            allowed=np.array([fits[i].method is not None for i in device_index]))
    clients = Clients(data.clients.sizes, device_index, fits, train_flops_per_sample(template, x[:1]))
    engine: Any = InProcessEngine(template, data.clients, vectorize=False)
    if config.mode == "portion":
        engine = PortionEngine(engine, lambda c: targets[int(device_index[c])])
    seeds = config.mode == "mezo"
    policy = RoundPolicy(uplink=make_codec(None), downlink=make_codec(None), seed_exchange=seeds)
    test = batches_of(data.x_test, data.y_test, 8)
    return FederatedServer(method.model, method.trainable_parameters(), engine, make_strategy("fedavg"), sampler,
                           clients, local, policy, lambda m: evaluate(m, test), None,
                           fingerprint(asdict(config)), checkpoint=False)


def run_federated(template: nn.Module, data: FederatedData, config: FederatedLLMConfig, *,
                  on_round: Callable[[RoundPoint], None] | None = None) -> tuple[FederatedServer, FederatedReport]:
    """Run ``config.rounds`` rounds; held-out perplexity and bytes up after each (round 0: before any)."""
    server = build_llm_server(template, data, config)
    points = [RoundPoint(0, server.evaluate(server.model)["perplexity"], 0, 0.0, 0, 0.0)]  # LM eval: perplexity
    if on_round:
        on_round(points[0])

    def record(r: RoundRecord) -> None:
        points.append(RoundPoint(r.round, r.eval["perplexity"], r.bytes_up, r.bytes_up / max(r.finished, 1),
                                 r.finished, r.round_time_s))
        if on_round:
            on_round(points[-1])

    server.run(config.rounds, on_round=record)
    trainable = sum(p.numel() for p in server.params.values())
    return server, FederatedReport(config.mode, tuple(data.client_names or ()), trainable, tuple(points))
