"""The keyboard job: pretrained in the cloud, fine-tuned with DP-FedAvg across Shakespeare users' phones.

Built on the federated engine (one :class:`RunConfig`), so everything a run does is also a config knob:
``KeyboardConfig.run_config()`` shows it, and ``pocketlearn fed simulate`` could run the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pocketlearn.apps.keyboard.pretrain import MODEL, PretrainConfig, pretrain
from pocketlearn.federated.config import RunConfig, parse_config

Update = Literal["bias", "partial", "full", "lora"]
# How a client trains and what it sends: every bias (12k numbers; the output bias shifts word frequencies
# toward the users'), partial embedding updates (the rows of words it saw plus the transformer body, as in
# Apple's PFL keyboard), every weight, or LoRA adapters on the transformer's layers. Under DP the noise grows
# with the square root of what is sent, so with tens of clients per round only "bias" keeps its signal: the
# paper's partial updates had thousands of clients per round.
UPDATES: dict[Update, dict[str, Any]] = {
    "bias": {"client": {"method": "bias", "options": {"train_head": False}}, "codec": {"up": "float32"}},
    "partial": {"client": {"method": "backprop", "options": {"embedding_rows": "seen"}}, "codec": {"up": "rows"}},
    "full": {"client": {"method": "backprop"}, "codec": {"up": "float32"}},
    "lora": {"client": {"method": "lora", "options": {"rank": 8}}, "codec": {"up": "float32"}},
}


@dataclass(frozen=True)
class KeyboardConfig:
    name: str = "keyboard"
    users: int = 100  # Shakespeare (play, role) users, drawn at random from the 456 with >= 2,000 characters
    rounds: int = 12
    clients_per_round: int = 30
    update: Update = "bias"
    lr: float = 0.5
    epochs: int = 1
    epsilon: float | None = 8.0  # DP-FedAvg with noise calibrated to this epsilon over the run; None: no DP
    clip: float = 0.3  # L2 bound of a client's update (DP)
    delta: float = 1e-3  # below 1 / users
    devices: dict[str, float] = field(default_factory=lambda: {"phone-1g": 0.6, "phone-4g": 0.4})
    dropout: float = 0.1
    eval_every: int = 2
    seed: int = 0
    pretraining: PretrainConfig = PretrainConfig()

    def noise_multiplier(self, population: int | None = None) -> float:
        """Noise std / clip that spends exactly ``epsilon`` over the run (dp-accounting, RDP).

        ``population``: the clients the run samples from (those whose device can train, at the fewest any round
        has available: :func:`pocketlearn.federated.experiment.dp_population`); default every user.
        """
        from pocketlearn.federated.privacy import calibrate_noise

        if self.epsilon is None:
            return 0.0
        return calibrate_noise(self.epsilon, self.delta, population or self.users, self.clients_per_round,
                               self.rounds)

    def run_config(self, init: Path, population: int | None = None) -> RunConfig:
        strategy: dict[str, Any] = {"name": "fedavg"}
        if self.epsilon is not None:
            strategy = {"name": "dp-fedavg", "options": {"dp": {
                "clip": self.clip, "noise_multiplier": self.noise_multiplier(population), "delta": self.delta,
                "target_epsilon": self.epsilon * 1.001}}}  # the guard: never past the promise (rounding aside)
        update = UPDATES[self.update]
        raw = {"name": self.name, "seed": self.seed, "rounds": self.rounds, "clients_per_round": self.clients_per_round,
               "model": {"name": MODEL, "init": str(init)},
               "data": {"name": "shakespeare-words", "partition": "natural", "num_clients": self.users,
                        "seed": self.seed},
               "client": {**update["client"], "lr": self.lr, "epochs": self.epochs, "batch_size": 16},
               "codec": update["codec"], "strategy": strategy,
               "devices": {"mix": self.devices, "dropout": self.dropout},
               "eval": {"every": self.eval_every, "batch_size": 256}}
        return parse_config(raw)


@dataclass
class KeyboardResult:
    before: dict[str, float]  # pretrained only, on the users' held-out lines
    after: dict[str, float]
    epsilon: float | None
    rounds: list[dict[str, Any]]  # per round: bytes, clients, test_* metrics when evaluated
    bytes_up_per_client: float  # mean over the clients that finished a round
    devices: list[dict[str, Any]]  # per device class: clients, budget, method, estimated peak memory

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_keyboard(config: KeyboardConfig, run_dir: Path | None, *, fresh: bool = False,
                 on_pretrain_step: Callable[[int, int, float], None] | None = None,
                 on_round: Callable[[Any], None] | None = None) -> KeyboardResult:
    """Pretrain (cached), then fine-tune federated; a killed run resumes from ``run_dir``."""
    from pocketlearn.federated.experiment import build_server, dp_population, load_federated_data

    init = pretrain(config.pretraining, on_step=on_pretrain_step)
    plain = config.run_config(init)
    data = load_federated_data(plain)
    population = dp_population(plain, data) if config.epsilon is not None else None  # what the run is charged for
    server, _ = build_server(config.run_config(init, population), run_dir, fresh=fresh, data=data)
    resumed = server.resume()
    saved = run_dir / "pretrained_eval.json" if run_dir else None
    if not resumed:  # evaluated before round 1 and kept: a resumed run's model has moved on
        before = server.evaluate(server.model)
        if saved:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(before))
    else:
        before = json.loads(saved.read_text()) if saved and saved.exists() else {}
    ran = server.run(config.rounds, on_round)
    if run_dir is not None:  # the whole run, also the rounds before a resume
        from pocketlearn.federated.metrics import read_metrics

        records = read_metrics(run_dir / "metrics.jsonl")
    else:
        records = [r.to_json() for r in ran]
    finished = sum(r["finished"] for r in records)
    result = KeyboardResult(
        before=before, after=server.evaluate(server.model), epsilon=records[-1]["epsilon"] if records else None,
        rounds=[{k: v for k, v in r.items() if k in _ROUND_KEYS or k.startswith("test_")} for r in records],
        bytes_up_per_client=sum(r["bytes_up"] for r in records) / max(finished, 1), devices=_devices(server))
    if run_dir is not None:
        (run_dir / "summary.json").write_text(json.dumps(result.to_json(), indent=1))
    return result


_ROUND_KEYS = ("round", "finished", "dropped", "bytes_up", "bytes_down", "epsilon")


def _devices(server: Any) -> list[dict[str, Any]]:
    import numpy as np

    counts = np.bincount(server.clients.device_index, minlength=len(server.clients.fits))
    return [{"device": f.device.name, "clients": int(n), "budget_bytes": f.device.memory_budget_bytes,
             "method": f.method, "peak_bytes": f.estimated_bytes, "note": f.note}
            for f, n in zip(server.clients.fits, counts, strict=True)]
