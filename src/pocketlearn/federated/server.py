"""The server loop: sample, train, aggregate, evaluate, log, checkpoint — one round at a time, resumable.

State (global weights, strategy state, sampler stream, round) is written atomically after every round; a
killed run started again with the same config continues from the last completed round and ends with the
same weights as a run that was never interrupted: every random draw is either in the checkpointed sampler
stream or derived from (seed, round, client).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pocketlearn.checkpoint import load_checkpoint, save_checkpoint
from pocketlearn.errors import ConfigError
from pocketlearn.federated.attacks import Attack
from pocketlearn.federated.codecs import Codec, ErrorFeedback, encode_dense, encode_dense_rows
from pocketlearn.federated.codecs.seeds import decode_history, encode_history, replay_delta
from pocketlearn.federated.metrics import MetricsLog
from pocketlearn.federated.population import DeviceFit, simulated_seconds
from pocketlearn.federated.sampling import ClientSampler
from pocketlearn.federated.simulate import LocalTraining, RoundResult
from pocketlearn.federated.strategies.base import Strategy
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates


class Engine(Protocol):
    def train(self, params: dict[str, Tensor], client_ids: list[int], rnd: int, local: LocalTraining
              ) -> RoundResult: ...


@dataclass
class Clients:
    """The population as arrays (thousands of clients cost no Python objects)."""

    sizes: np.ndarray  # samples per client
    device_index: np.ndarray  # index into ``fits`` per client
    fits: list[DeviceFit]  # per device class: method to train with (None = cannot train; reported)
    flops_per_sample: float

    def method_of(self, c: int) -> str | None:
        return self.fits[int(self.device_index[c])].method


@dataclass
class RoundPolicy:
    deadline_s: float | None = None
    dropout: float = 0.0
    seed: int = 3
    eval_every: int = 1
    uplink: Codec = field(default_factory=Codec)
    downlink: Codec = field(default_factory=Codec)
    error_feedback: bool = True
    codec_seed: int = 4
    attack: Attack | None = None
    seed_exchange: bool = False  # MeZO clients send (seed, g) pairs; the server replays them
    secagg: Any = None  # a SecAggSection: aggregate through secure aggregation
    mixed: Any = None  # a MixedMethods: devices train with different methods, combined by federated.mixed's rule


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
        self.run_id = secrets.token_hex(8)  # new for a fresh run, restored on resume (devices key state by it)
        self.last_round = 0  # evaluated whatever eval_every says
        self._send_buffer = self._warm_send_buffer()  # clients' serialized updates, reused across rounds
        self.feedback = ErrorFeedback() if policy.uplink.biased and policy.error_feedback else None
        self.log = MetricsLog(run_dir / "metrics.jsonl") if run_dir else None
        self.discarded_rounds = 0  # metrics lines of a run folder without a checkpoint, dropped by resume()
        self._bytes_by_method: dict[str, int] = {}  # this round's uplink bytes per training method

    def _warm_send_buffer(self, limit: int = 64 << 20) -> np.ndarray | None:
        """Allocate (and fault in) the round's send buffer during setup rather than in round 1."""
        k = self.sampler.per_round
        if k * 4 * sum(p.numel() for p in self.params.values()) > limit:
            return None
        return encode_dense_rows({n: p.detach().unsqueeze(0).expand(k, *p.shape) for n, p in self.params.items()})

    # --- checkpoints -------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | None:
        return self.run_dir / "state.pt" if self.run_dir and self.checkpoint else None

    def save(self) -> None:
        if self.state_path is None:
            return
        save_checkpoint(self.state_path, {
            "fingerprint": self.fingerprint, "round": self.round, "run_id": self.run_id,
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "strategy": self.strategy.state_dict(), "sampler": json.dumps(self.sampler.state_dict()),
            "feedback": self.feedback.state_dict() if self.feedback else {},
        })

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
        if self.log:
            self.log.truncate(self.round)
        return True

    # --- one round ---------------------------------------------------------------------------------------
    def run_round(self) -> RoundRecord:
        rnd = self.round + 1
        start = time.perf_counter()
        sampled = self.sampler.sample(rnd)
        dropped = np.zeros(len(sampled), dtype=bool)
        if self.policy.dropout:
            dropped = np.random.default_rng([self.policy.seed, rnd]).random(len(sampled)) < self.policy.dropout
        down, start_params = self._download(rnd)
        training = [int(c) for c in sampled[~dropped]]
        by_method: dict[str, list[int]] = {}
        for c in training:  # the sampler only offers clients whose device can train
            by_method.setdefault(self.clients.method_of(c) or "", []).append(c)
        mixed = self.policy.mixed
        expansion = mixed.expansion(self.params, rnd) if mixed else None
        results = [self.engine.train(start_params, ids, rnd, self._local(m, rnd)) for m, ids in by_method.items()]
        finished, up, times, losses, wire = self._finish(results, list(by_method), down, rnd, start_params, expansion)
        n_finished, secagg_received = 0 if finished is None else len(finished), 0
        if finished is not None:
            if expansion is not None and self.policy.secagg is not None:
                from pocketlearn.federated.mixed import secure_combine

                cfg = self.policy.secagg
                combine = getattr(self.engine, "secure_combine", secure_combine)  # devices that run the protocol
                finished, up, secagg_received = combine(wire, expansion, threshold=cfg.threshold, clip=cfg.clip,
                                                        neighbours=cfg.neighbours, seed=rnd)
            elif self.policy.secagg is not None:
                secured = results[0].secure if len(results) == 1 else None  # the devices ran the protocol
                finished, up, secagg_received = (secured.mean, secured.sent, secured.received) if secured \
                    else self._secure_mean(finished, rnd)
            if self.policy.secagg is not None and expansion is None and hasattr(self.strategy, "mechanism"):
                # distributed DP: ``finished`` holds the unmasked noisy sum; no clipping or noise is left to do
                self.strategy.apply_means(self.params, self._distributed_dp().release(
                    {n: d[0] for n, d in finished.deltas.items()}))
            elif expansion is not None and hasattr(self.strategy, "mechanism"):
                from pocketlearn.federated.mixed import private_combine

                self.strategy.apply_means(self.params, private_combine(wire, expansion, mixed,
                                                                       self.strategy.mechanism))
            else:
                self.strategy.apply(self.params, finished)
        round_time = time.perf_counter() - start
        self.round = rnd
        record = RoundRecord(
            rnd, len(sampled), n_finished, int(dropped.sum()), len(training) - n_finished, up,
            down * len(sampled) + secagg_received,
            float(max(times, default=0.0)), round_time,
            float(losses.mean()) if losses is not None and len(losses) else None,
            by_method={m: len(ids) for m, ids in by_method.items()}, bytes_by_method=self._bytes_by_method)
        if hasattr(self.strategy, "epsilon_so_far"):
            record.epsilon = self.strategy.epsilon_so_far()
            record.dp_noise = getattr(getattr(self.strategy, "mechanism", None), "noise_source", None)
        if rnd % self.policy.eval_every == 0 or rnd == self.last_round:
            record.eval = self.evaluate(self.model)
        return record

    def _download(self, rnd: int) -> tuple[int, dict[str, Tensor]]:
        """(bytes of the global-model payload, the weights clients start from: decoded from that payload)."""
        codec = self.policy.downlink
        payload = downlink_payload(self.params, codec, self.policy.codec_seed, rnd)
        return len(payload), codec.decode(payload) if codec.stages else self.params

    def _upload(self, u: RoundUpdates, rnd: int) -> list[int]:
        """Encode each client's update for real; its row becomes what the server decodes. Returns byte counts."""
        codec = self.policy.uplink
        if not codec.stages and not u.trained:
            self._send_buffer = encode_dense_rows(u.deltas, self._send_buffer)
            return [self._send_buffer.shape[1]] * len(u)
        sizes = []
        expected = {n: d.shape[1:] for n, d in u.deltas.items()}
        for k, c in enumerate(u.client_ids):
            delta = u.client_delta(k)
            rng = uplink_stream(self.policy.codec_seed, rnd, c)
            if self.feedback:
                payload, sent = self.feedback.encode(codec, c, delta, rng)
            else:
                payload = codec.encode(delta, rng)
                sent = codec.decode(payload, expected)
            for n, t in sent.items():
                u.deltas[n][k] = t
            sizes.append(len(payload))
        return sizes

    def _upload_seeds(self, u: RoundUpdates, histories: list[list[tuple[int, float]]], start: dict[str, Tensor]
                      ) -> list[int]:
        """Seed exchange: each MeZO client's pairs travel; its row becomes the server's replay of them."""
        options = self._local("mezo", 0).method_options()
        sizes = []
        for k, history in enumerate(histories):
            payload = encode_history(history)
            replayed = replay_delta({n: start[n] for n in u.client_delta(k)}, decode_history(payload), options)
            for n, t in replayed.items():
                u.deltas[n][k] = t
            sizes.append(len(payload))
        return sizes

    def _secure_mean(self, updates: RoundUpdates, rnd: int) -> tuple[RoundUpdates, int, int]:
        """The sample-weighted mean delta by secure aggregation (one row, as if from one client).

        Also returns the protocol's bytes sent and received: its messages replace the plain payloads. Under DP
        (distributed DP, :mod:`pocketlearn.federated.privacy.distributed`) the row is instead the unmasked sum of
        the clients' clipped updates and noise shares, unweighted.
        """
        from pocketlearn.federated.secagg import secure_mean

        cfg = self.policy.secagg
        if hasattr(self.strategy, "mechanism"):
            from pocketlearn.federated.secagg.run import Ledger

            ledger = Ledger.empty(len(updates))
            sums = self._distributed_dp().secure_sum(updates, threshold=cfg.threshold, neighbours=cfg.neighbours,
                                                     seed=rnd, ledger=ledger)
            row = RoundUpdates([-1], updates.num_samples.sum().view(1), {n: t.unsqueeze(0) for n, t in sums.items()})
            return row, int(ledger.sent.sum()), int(ledger.received.sum())
        mean, ledger = secure_mean(updates, threshold=cfg.threshold, clip=cfg.clip, neighbours=cfg.neighbours,
                                   seed=rnd)
        return mean, int(ledger.sent.sum()), int(ledger.received.sum())

    def _distributed_dp(self) -> Any:
        """The strategy's privacy mechanism, as the clients of a secure round share its noise."""
        from pocketlearn.federated.privacy.distributed import DistributedDP

        return DistributedDP(self.strategy.mechanism)

    def _local(self, method: str, rnd: int) -> LocalTraining:
        if self.policy.mixed is None:
            return replace(self.local, method=method)
        options = self.policy.mixed.round_options(rnd)[method]
        return replace(self.local, method=method, options=tuple(sorted(options.items())))

    def _finish(self, results: list[RoundResult], methods: list[str], down: int, rnd: int, start: dict[str, Tensor],
                expansion: Any = None
                ) -> tuple[RoundUpdates | None, int, list[float], Tensor | None, list[tuple[str, RoundUpdates]]]:
        """Encode each update, time each client on its device, drop stragglers past the deadline.

        Mixed runs also return each method's wire updates of the clients that made it (for secure or private
        aggregation); the updates returned first are the same, expanded to deltas of the global parameters.
        """
        keep_rows, up_total, times, losses, wire_groups = [], 0, [], [], []
        self._bytes_by_method = {}
        deadline = self.policy.deadline_s
        for result, method in zip(results, methods, strict=True):
            u = result.updates
            if self.policy.attack:
                self.policy.attack.poison(u, rnd)
            if expansion is not None and method in expansion.wire and result.histories is not None:
                u = expansion.zo_wire(u, result.histories)  # one coefficient per seed of the round's pool
                sizes = self._upload(u, rnd)
            elif self.policy.seed_exchange and result.histories is not None:
                sizes = self._upload_seeds(u, result.histories, start)
            elif result.payload_bytes is not None:  # encoded on the devices, decoded by the engine
                sizes = result.payload_bytes
            else:
                sizes = self._upload(u, rnd)
            if expansion is not None:
                wire = u
                result.updates = u = expansion.expand(method, wire)
            samples = u.num_samples.tolist()
            kept = []
            for k, (c, up) in enumerate(zip(u.client_ids, sizes, strict=True)):
                device = self.clients.fits[self.clients.device_index[c]].device
                t = simulated_seconds(device, samples=int(samples[k]) * self.local.epochs,
                                      flops_per_sample=self.clients.flops_per_sample, down_bytes=down, up_bytes=up)
                on_time = deadline is None or t <= deadline
                times.append(min(t, deadline) if deadline is not None else t)
                if on_time:
                    up_total += up
                    keep_rows.append((result, k))
                    kept.append(k)
                    self._bytes_by_method[method] = self._bytes_by_method.get(method, 0) + up
            losses.append(result.train_loss)
            if expansion is not None and kept:
                wire_groups.append((method, _rows(wire, kept)))
        if not keep_rows:
            return None, up_total, times, None, wire_groups
        return _select(results, keep_rows), up_total, times, torch.cat(losses), wire_groups

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
        return records


def downlink_payload(params: dict[str, Tensor], codec: Codec, codec_seed: int, rnd: int) -> bytes:
    """The global model as round ``rnd`` sends it: the codec's random stream is fixed by seed and round."""
    if not codec.stages:
        return encode_dense(params)
    return codec.encode(params, np.random.default_rng([codec_seed, rnd, 2**32]))  # 2**32: not a client id


def uplink_stream(codec_seed: int, rnd: int, client: int) -> np.random.Generator:
    """The random stream client ``client`` encodes its round-``rnd`` update with (wherever it is encoded)."""
    return np.random.default_rng([codec_seed, rnd, client])


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
