"""The server loop: sample, train, aggregate, evaluate, log, checkpoint — one round at a time, resumable.

State (global weights, strategy state, sampler stream, round) is written atomically after every round; a
killed run started again with the same config continues from the last completed round and ends with the
same weights as a run that was never interrupted: every random draw is either in the checkpointed sampler
stream or derived from (seed, round, client).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.checkpoint import load_checkpoint, save_checkpoint
from pocketlearn.errors import ConfigError, TrainingError
from pocketlearn.federated.attacks import Attack
from pocketlearn.federated.codecs import Codec, ErrorFeedback, dense_size, encode_dense
from pocketlearn.federated.metrics import MetricsLog
from pocketlearn.federated.pipeline import (
    Aggregation,
    Applied,
    Arrived,
    Methods,
    MixedRound,
    OneMethod,
    aggregation,
    secure_plan,
)
from pocketlearn.federated.population import DeviceFit, simulated_seconds
from pocketlearn.federated.round import Engine, RoundPlan, RoundResult
from pocketlearn.federated.sampling import ClientSampler
from pocketlearn.federated.simulate import LocalTraining
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates
from pocketlearn.federated.uplink import CodecUplink, Uplink, choose_uplink, sends_seeds

if TYPE_CHECKING:
    from pocketlearn.federated.config import SecAggSection
    from pocketlearn.federated.mixed import Expansion, MixedMethods

WAIT_MINUTES = 24 * 60  # a round waits at most a simulated day for a trace to make someone available

__all__ = ["Clients", "Engine", "FederatedServer", "RoundPolicy", "RoundRecord", "fingerprint"]


@dataclass
class Clients:
    """The population as arrays (thousands of clients cost no Python objects)."""

    sizes: np.ndarray  # samples per client
    device_index: np.ndarray  # index into ``fits`` per client
    fits: list[DeviceFit]  # per device class: method to train with (None = cannot train; reported)
    flops_per_sample: float
    speed: np.ndarray | None = None  # per client: its device's speed relative to its class (None: all 1)
    step_cost: dict[str, float] = field(default_factory=dict)  # method -> its step time / backprop's (missing: 1)

    def method_of(self, c: int) -> str | None:
        return self.fits[int(self.device_index[c])].method

    def seconds(self, c: int, *, samples: int, down_bytes: int, up_bytes: int) -> float:
        """Client ``c``'s simulated time for a task: download, train ``samples``, upload, on its own device."""
        return self.seconds_of([c], samples=np.array([samples]), down_bytes=down_bytes, up_bytes=[up_bytes])[0]

    def seconds_of(self, ids: list[int], *, samples: np.ndarray, down_bytes: int, up_bytes: list[int]) -> list[float]:
        """:meth:`seconds` of many clients at once, one device class at a time."""
        rows = np.asarray(ids, dtype=np.int64)
        devices = self.device_index[rows]
        up = np.asarray(up_bytes, dtype=np.int64)
        out = np.empty(len(rows))
        for d in np.unique(devices) if len(self.fits) > 1 else [0]:
            fit, of = self.fits[int(d)], devices == d
            cost = self.step_cost.get(fit.method or "", 1.0)
            out[of] = simulated_seconds(fit.device, samples=samples[of], flops_per_sample=self.flops_per_sample * cost,
                                        down_bytes=down_bytes, up_bytes=up[of])
        return (out if self.speed is None else out / self.speed[rows]).tolist()


@dataclass(kw_only=True)
class RoundPolicy:
    """What a run's rounds do besides training, given by keyword (twelve settings read badly by position).

    Deadline and dropout, codecs, attack, seed exchange, secure aggregation, mixed methods.
    """

    deadline_s: float | None = None
    dropout: float = 0.0
    overselect: float = 0.0  # sample this much more than clients_per_round; the round closes at clients_per_round
    seed: int = 3
    eval_every: int = 1
    uplink: Codec = field(default_factory=Codec)
    downlink: Codec = field(default_factory=Codec)
    error_feedback: bool = True
    codec_seed: int = 4
    attack: Attack | None = None
    seed_exchange: bool = False  # MeZO clients send (seed, g) pairs; the server replays them
    secagg: SecAggSection | None = None  # aggregate through secure aggregation
    mixed: MixedMethods | None = None  # devices train with different methods, combined by federated.mixed's rule
    max_failed_rounds: int = 1  # rounds in a row that may apply no update (a failed protocol) before the run stops


@dataclass
class RoundRecord:
    round: int
    sampled: int
    finished: int
    dropped: int
    stragglers: int
    bytes_up: int
    bytes_down: int
    sim_time_s: float
    round_time_s: float
    train_loss: float | None
    eval: dict[str, float] = field(default_factory=dict)
    by_method: dict[str, int] = field(default_factory=dict)
    bytes_by_method: dict[str, int] = field(default_factory=dict)  # uplink bytes of the clients that made it
    epsilon: float | None = None  # privacy spent so far (differentially private strategies)
    dp_noise: str | None = None  # where the DP noise came from ("... not private" when reproducible from the seed)
    clock_s: float = 0.0  # simulated seconds since the run started, when this round (or server update) ended
    surplus: int = 0  # over-selected clients that finished after the round had its clients_per_round
    failed: str | None = None  # why the round applied no update, when its aggregation could not complete

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("eval", "by_method", "bytes_by_method")}
        out.update({f"test_{k}": v for k, v in self.eval.items()})
        out["by_method"] = self.by_method
        if len(self.bytes_by_method) > 1:
            out["bytes_by_method"] = self.bytes_by_method
        return out


class FederatedServer:
    """Runs rounds; everything it needs arrives ready-made, so a test can swap any piece."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor], engine: Engine, strategy: Strategy,
                 sampler: ClientSampler, clients: Clients, local: LocalTraining, policy: RoundPolicy,
                 evaluate: Callable[[nn.Module], dict[str, float]], run_dir: Path | None, fingerprint: str,
                 *, checkpoint: bool = True):
        self.model, self.params, self.engine, self.strategy = model, params, engine, strategy
        self.sampler, self.clients, self.local, self.policy = sampler, clients, local, policy
        self.evaluate, self.run_dir, self.fingerprint = evaluate, run_dir, fingerprint
        self.checkpoint = checkpoint
        self.round = 0
        self.clock_s = 0.0  # simulated time: each round adds its slowest client's (or the deadline)
        self.run_id = secrets.token_hex(8)  # new for a fresh run, restored on resume (devices key state by it)
        self.last_round = 0  # evaluated whatever eval_every says
        self.feedback = ErrorFeedback() if policy.uplink.biased and policy.error_feedback else None
        self._codec = CodecUplink(policy.uplink, policy.codec_seed, self.feedback)
        self.log = MetricsLog(run_dir / "metrics.jsonl") if run_dir else None
        self.discarded_rounds = 0  # metrics lines of a run folder without a checkpoint, dropped by resume()
        self._bytes_by_method: dict[str, int] = {}  # this round's uplink bytes per training method
        # the round's steps, chosen once from the config
        self.methods: Methods = MixedRound(local, policy.mixed) if policy.mixed is not None else OneMethod(local)
        mechanism = strategy.mechanism
        self.secure = secure_plan(policy.secagg, mechanism)
        self.aggregation: Aggregation = aggregation(strategy, engine, self.secure, policy.mixed)
        self._local_dp_on_devices = False
        if engine.on_devices and mechanism is not None and mechanism.config.mode == "local":
            self._local_dp_on_devices = True
            mechanism.noised_by_devices = True  # the server must not clip and noise the noisy reports again
        self._uplinks: dict[str, Uplink] = {}
        self._surplus = 0  # this round's over-selected clients past the report goal
        self._attack: Callable[[RoundUpdates, int], object] = policy.attack.poison if policy.attack else _no_attack
        dense_size({n: tuple(t.shape) for n, t in params.items()})  # its header is packed once: here, not in round 1

    # --- checkpoints -------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | None:
        return self.run_dir / "state.pt" if self.run_dir and self.checkpoint else None

    def save(self) -> None:
        if self.state_path is None:
            return
        save_checkpoint(self.state_path, self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue as if never stopped."""
        return {
            "fingerprint": self.fingerprint, "round": self.round, "run_id": self.run_id, "clock_s": self.clock_s,
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "strategy": self.strategy.state_dict(), "sampler": json.dumps(self.sampler.state_dict()),
            "feedback": self.feedback.state_dict() if self.feedback else {},
            "step_cost": self.clients.step_cost,  # measured: a resumed run keeps its first process's figures
        }

    def resume(self) -> bool:
        """Continue from the checkpoint in the run folder, if any; True when resumed.

        Without a checkpoint the run starts at round 0 and earlier metrics lines are dropped
        (``discarded_rounds`` says how many, for the caller to report).
        """
        if self.state_path is None or not self.state_path.exists():
            # rounds logged without a checkpoint (killed before the first one, state.pt deleted): start over
            self.discarded_rounds = self.log.truncate(0) if self.log else 0
            return False
        state = load_checkpoint(self.state_path, remedy=f"restore {self.state_path.name} from a backup, or delete "
                                "it to restart this run from round 0 (its metrics start over too)")
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.run_dir} holds a run with a different config; pick another run name, or "
                              "pass --fresh to start this one over")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state["params"][n])
        self.strategy.load_state_dict(state["strategy"])
        self.sampler.load_state_dict(json.loads(state["sampler"]))
        if self.feedback:
            self.feedback.load_state_dict(state.get("feedback", {}))
        self.round = int(state["round"])
        self.run_id = str(state.get("run_id", self.run_id))
        self.clock_s = float(state.get("clock_s", 0.0))
        self.clients.step_cost = dict(state.get("step_cost", self.clients.step_cost))
        self.load_state(state)
        if self.log:
            self.log.truncate(self.round)
        return True

    def load_state(self, state: dict[str, Any]) -> None:
        """What a subclass keeps besides the common state (nothing here)."""

    # --- one round ---------------------------------------------------------------------------------------
    def run_round(self) -> RoundRecord:
        rnd = self.round + 1
        start = time.perf_counter()
        self.wait_for_available(rnd)
        drawn = math.ceil(self.sampler.per_round * (1 + self.policy.overselect))
        sampled = self.sampler.sample(rnd, self.clock_s, drawn)
        dropped = self._dropouts(rnd, len(sampled))
        down, weights, start_params = self._download(rnd)
        training = [int(c) for c in sampled[~dropped]]
        by_method: dict[str, list[int]] = {}
        for c in training:  # the sampler only offers clients whose device can train
            by_method.setdefault(self.clients.method_of(c) or "", []).append(c)
        expansion = self.methods.expansion(self.params, rnd)
        results = [self.engine.run(start_params, self._plan(m, ids, rnd, weights, start_params, expansion))
                   for m, ids in by_method.items()]
        arrived, up, times, losses = self._arrive(results, list(by_method), down, rnd, start_params,
                                                  expansion)
        n_finished, received, failure = 0, 0, None
        if arrived is not None:
            applied = self._aggregate(arrived)
            n_finished, received, failure = applied.finished, applied.received, applied.failure
            up = up if applied.sent is None else applied.sent
        round_time = time.perf_counter() - start
        self.round = rnd
        self.clock_s += float(max(times, default=0.0))
        record = RoundRecord(
            rnd, len(sampled), n_finished, int(dropped.sum()), len(training) - n_finished - self._surplus, up,
            down * len(sampled) + received,
            float(max(times, default=0.0)), round_time,
            float(losses.mean()) if losses is not None and len(losses) else None,
            by_method={m: len(ids) for m, ids in by_method.items()}, bytes_by_method=self._bytes_by_method,
            clock_s=self.clock_s, surplus=self._surplus, failed=failure)
        mechanism = self.strategy.mechanism
        if mechanism is not None:
            record.epsilon = mechanism.epsilon_so_far()
            record.dp_noise = mechanism.noise_source
        if rnd % self.policy.eval_every == 0 or rnd == self.last_round:
            record.eval = self.evaluate(self.model)
        return record

    def _dropouts(self, rnd: int, sampled: int) -> np.ndarray:
        """Which of the ``sampled`` clients drop out of round ``rnd`` (each with probability ``dropout``)."""
        if not self.policy.dropout:
            return np.zeros(sampled, dtype=bool)
        return np.random.default_rng([self.policy.seed, rnd]).random(sampled) < self.policy.dropout

    def wait_for_available(self, rnd: int) -> None:
        """Under a trace, move the simulated clock on a minute at a time until some client is available."""
        if self.sampler.trace is None:
            return
        for _ in range(WAIT_MINUTES):
            if self.sampler.eligible(rnd, self.clock_s).any():
                return
            self.clock_s += 60.0
        raise TrainingError(f"round {rnd}: no client is available at any minute of a whole day of devices.trace "
                            "from the simulated clock on; check the trace's windows (and devices.mix)")

    def _aggregate(self, arrived: Arrived) -> Applied:
        applied = self.aggregation.apply(self.params, arrived)
        _keep_variances_valid(self.params)
        return applied

    def _download(self, rnd: int) -> tuple[int, bytes, dict[str, Tensor]]:
        """(the global model's size on the downlink, its payload, the weights clients start from: its decoding).

        Uncompressed weights arrive as they are: only real devices need the payload written out (else b"").
        """
        codec = self.policy.downlink
        if not codec.stages and not self.engine.on_devices:
            return dense_size({n: tuple(t.shape) for n, t in self.params.items()}), b"", self.params
        payload = downlink_payload(self.params, codec, self.policy.codec_seed, rnd)
        return len(payload), payload, codec.decode(payload) if codec.stages else self.params

    def _plan(self, method: str, client_ids: list[int], rnd: int, weights: bytes, start: dict[str, Tensor],
              expansion: Expansion | None) -> RoundPlan:
        """What the engine needs for one method group of round ``rnd``: nothing else of the server."""
        local = self.methods.local(method, rnd)
        mechanism = self.strategy.mechanism
        noise = None
        if self._local_dp_on_devices and mechanism is not None:  # the round the strategy will privatize
            noise = mechanism.local_noise(mechanism.rounds + 1, self._noise_unit(method))
        policy = self.policy
        return RoundPlan(rnd=rnd, client_ids=client_ids, local=local,
                         wire_shapes=self.methods.wire_shapes(start, expansion, method), weights=weights,
                         downlink=policy.downlink.spec, uplink=policy.uplink.spec,
                         seeds=policy.seed_exchange and sends_seeds(method), codec_seed=policy.codec_seed,
                         error_feedback=self.feedback is not None, run_id=self.run_id, local_noise=noise,
                         secure=self.secure)

    def _noise_unit(self, method: str) -> float:
        """A method's wire update is divided by its kind's unit before clipping (mixed runs' ``dp.kind_scale``)."""
        mechanism = self.strategy.mechanism
        if self.policy.mixed is None or mechanism is None:
            return 1.0
        from pocketlearn.federated.mixed import kind_unit

        return kind_unit(mechanism.config.kind_scale, method)

    def _uplink(self, method: str) -> Uplink:
        """How ``method``'s updates reach the server (decided once per method, on first use)."""
        if method not in self._uplinks:
            self._uplinks[method] = choose_uplink(
                method, self._codec, mixed=self.policy.mixed is not None, on_devices=self.engine.on_devices,
                seed_exchange=self.policy.seed_exchange,
                seed_options=lambda: self.methods.local(self.local.method, 0).method_options())
        return self._uplinks[method]

    def _arrive(self, results: list[RoundResult], methods: list[str], down: int, rnd: int, start: dict[str, Tensor],
                expansion: Expansion | None) -> tuple[Arrived | None, int, list[float], Tensor | None]:
        """Encode each update, time each client on its device, drop stragglers past the deadline.

        Returns the updates that made it (expanded to deltas of the global parameters, with each method's wire
        updates in a mixed run), the uplink bytes, each client's simulated time and the training losses.
        """
        deadline = self.policy.deadline_s
        arrivals: list[tuple[float, int, str, RoundResult, int, int]] = []  # (time, group, method, result, row, bytes)
        wires, losses = [], []
        for g, (result, method) in enumerate(zip(results, methods, strict=True)):
            self._attack(result.updates, rnd)
            wire, sizes = self._uplink(method).send(result, rnd, start, expansion)
            result.updates = u = expansion.expand(method, wire) if expansion is not None else wire
            samples = u.num_samples.numpy().astype(np.int64) * self.local.epochs
            seconds = self.clients.seconds_of(u.client_ids, samples=samples, down_bytes=down, up_bytes=sizes)
            arrivals += [(t, g, method, result, k, up) for k, (t, up) in enumerate(zip(seconds, sizes, strict=True))]
            wires.append(wire)
            losses.append(result.train_loss)
        on_time = sorted((a for a in arrivals if deadline is None or a[0] <= deadline),
                         key=lambda a: (a[0], a[1], a[4]))  # first to arrive first
        kept = on_time[: self.sampler.per_round]  # over-selected: the round closes at its report goal
        self._surplus = len(on_time) - len(kept)
        times = [a[0] for a in kept] if self._surplus else [min(a[0], deadline) if deadline is not None else a[0]
                                                             for a in arrivals]
        self._bytes_by_method = {}
        for a in kept:
            self._bytes_by_method[a[2]] = self._bytes_by_method.get(a[2], 0) + a[5]
        up_total = sum(a[5] for a in kept)
        if not kept:
            return None, up_total, times, None
        kept.sort(key=lambda a: (a[1], a[4]))  # back in the order the groups returned them
        keep_rows = [(a[3], a[4]) for a in kept]
        wire_groups = [] if expansion is None else [
            (methods[g], _rows(wires[g], [a[4] for a in kept if a[1] == g])) for g in range(len(results))
            if any(a[1] == g for a in kept)]
        return Arrived(rnd, _select(results, keep_rows), wire_groups, expansion), up_total, times, torch.cat(losses)

    def run(self, rounds: int, on_round: Callable[[RoundRecord], None] | None = None) -> list[RoundRecord]:
        records = []
        self.last_round = rounds
        if self.log:  # the file holds rounds 1..self.round only, whatever an earlier process left in it
            self.log.truncate(self.round)
        while self.round < rounds:
            record = self.run_round()
            if self.log:  # the line first: a kill before the checkpoint redoes the round and cuts the line
                self.log.append(record.to_json())
            self.save()
            records.append(record)
            if on_round:
                on_round(record)
            self._stop_on_failures(records)
        return records

    def _stop_on_failures(self, records: list[RoundRecord]) -> None:
        """A run that applies no update must not go on, nor end as a success (its metrics line says why)."""
        failed = 0
        for record in reversed(records):
            if record.failed is None:
                break
            failed += 1
        limit = self.policy.max_failed_rounds
        if failed >= limit:
            raise TrainingError(
                f"round {records[-1].round} applied no update ({records[-1].failed}); {failed} round(s) in a row "
                f"failed, max_failed_rounds = {limit}. Fix its cause (or raise max_failed_rounds to ride out "
                "a flaky network) and run again")


def _keep_variances_valid(params: dict[str, Tensor]) -> None:
    """DP noise on averaged running statistics may take a batch norm's variance below zero (NaN outputs)."""
    for name, t in params.items():
        if name.endswith("running_var"):
            t.clamp_(min=0.0)


def downlink_payload(params: dict[str, Tensor], codec: Codec, codec_seed: int, rnd: int) -> bytes:
    """The global model as round ``rnd`` sends it: the codec's random stream is fixed by seed and round."""
    if not codec.stages:
        return encode_dense(params)
    return codec.encode(params, np.random.default_rng([codec_seed, rnd, 2**32]))  # 2**32: not a client id


def _no_attack(updates: RoundUpdates, rnd: int) -> None:
    """Honest clients: their updates leave them as trained."""


def _select(results: list[RoundResult], rows: list[tuple[RoundResult, int]]) -> RoundUpdates:
    """The updates of the clients that made the deadline, across the method groups of the round."""
    if len(results) == 1 and len(rows) == len(results[0].updates):
        return results[0].updates
    picked = []
    for result, k in rows:
        u = result.updates
        picked.append(ClientUpdate(u.client_ids[k], int(u.num_samples[k]), u.client_delta(k)))
    return RoundUpdates.stack(picked)


def _rows(u: RoundUpdates, rows: list[int]) -> RoundUpdates:
    if len(rows) == len(u):
        return u
    return RoundUpdates.stack([ClientUpdate(u.client_ids[k], int(u.num_samples[k]), u.client_delta(k)) for k in rows])


def fingerprint(config: dict[str, Any]) -> str:
    """What must match for a checkpoint to be resumed (everything but the number of rounds, engine, tracking)."""
    relevant = {k: v for k, v in config.items() if k not in ("rounds", "engine", "checkpoint", "tracking")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]
