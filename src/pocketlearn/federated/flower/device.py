"""The device's half of a round: the simulator's own training code, run on one client's file of examples.

A SuperNode started by ``pocketlearn fed join`` carries in its node config where its examples are and which
device preset it is; each train message is one client's round of :class:`InProcessEngine` training from the
decoded global weights, checked first against the preset's memory budget, and the update goes back encoded
with the run's uplink codec (or as MeZO's seeds), drawn from the same random stream the simulator uses.
What travels is the method's wire form (mixed-method runs), clipped and noised here in local DP, with error
feedback's residual kept in a file next to the examples.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from pocketlearn.devices import DeviceProfile, get_device
from pocketlearn.errors import ConfigError, DataError
from pocketlearn.federated.config import RunConfig
from pocketlearn.federated.flower.messages import SEEDS, DeviceInfo, TrainReply, TrainRequest
from pocketlearn.federated.round import RoundResult, SeedPairs

if TYPE_CHECKING:  # the query handler answers without loading torch
    from torch import Tensor

# Keys of a SuperNode's node config (``--node-config``), written by ``fed join``.
DATA_PATH, DEVICE, PROFILES, CLIENT_ID, NUM_EXAMPLES = "data-path", "device", "profiles", "client-id", "num-examples"


@dataclass(frozen=True)
class DeviceSetup:
    """What ``fed join`` tells its SuperNode: the examples file, its client id and size, the device preset."""

    data_path: Path
    device: str
    client_id: int
    num_examples: int
    profiles: str = ""  # a TOML file of device profiles, when ``device`` is not a preset

    def node_config(self) -> dict[str, str | int]:
        return {DATA_PATH: str(self.data_path), DEVICE: self.device, PROFILES: self.profiles,
                CLIENT_ID: self.client_id, NUM_EXAMPLES: self.num_examples}

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any]) -> DeviceSetup:
        missing = [k for k in (DATA_PATH, DEVICE, CLIENT_ID, NUM_EXAMPLES) if k not in config]
        if missing:
            raise ConfigError(f"this SuperNode's node config lacks {missing}; start devices with "
                              "`pocketlearn fed join`, which sets them")
        return cls(Path(str(config[DATA_PATH])), str(config[DEVICE]), int(config[CLIENT_ID]),
                   int(config[NUM_EXAMPLES]), str(config.get(PROFILES, "")))

    def profile(self) -> DeviceProfile:
        return get_device(self.device, self.profiles or None)

    def info(self) -> DeviceInfo:
        return DeviceInfo(self.client_id, self.num_examples, self.device)


def describe_examples(data_path: Path, device: str, profiles: str = "") -> DeviceSetup:
    """Check an examples file and a device name before a SuperNode starts; errors name the fix."""
    from pocketlearn.data.files import load_examples

    x, _, meta = load_examples(data_path)
    if "client_id" not in meta:
        raise DataError(f"{data_path} does not say which client it is (no client_id in its meta); write it with "
                        "`pocketlearn fed partition CONFIG --out DIR`, or save_examples(..., client_id=N)")
    setup = DeviceSetup(data_path.resolve(), device, int(meta["client_id"]), len(x), profiles)
    setup.profile()  # an unknown device is an error now, not in the first round
    return setup


class _OwnSamples(Sequence[np.ndarray]):
    """Index lists as the simulator's engine reads them, for a population of which this device knows one client.

    The engine draws client ``c``'s visiting order from ``default_rng([seed, round, c])`` over ``indices[c]``;
    the device's file holds that client's samples in partition order, so positions 0..n-1 give the same order.
    """

    def __init__(self, client_id: int, n: int):
        self.client_id, self.positions = client_id, np.arange(n)

    @overload
    def __getitem__(self, c: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, c: slice) -> Sequence[np.ndarray]: ...

    def __getitem__(self, c: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        if isinstance(c, slice) or c != self.client_id:
            raise IndexError(f"this device holds client {self.client_id}'s examples only, not {c}")
        return self.positions

    def __len__(self) -> int:
        return self.client_id + 1


def train_request(request: TrainRequest, config: RunConfig, setup: DeviceSetup) -> TrainReply:
    """Run one client's round on this device and encode what it sends back."""
    from pocketlearn.data.files import load_examples
    from pocketlearn.federated.clients import InMemoryClients
    from pocketlearn.federated.codecs import make_codec
    from pocketlearn.federated.experiment import build_template
    from pocketlearn.federated.simulate import InProcessEngine

    t0 = time.perf_counter()
    if request.client_id != setup.client_id:
        raise ConfigError(f"the server asked for client {request.client_id}, this device holds client "
                          f"{setup.client_id} ({setup.data_path})")
    x, y, _ = load_examples(setup.data_path)
    template = build_template(config)
    start = make_codec(request.down_codec).decode(request.weights)
    check_budget(template, request, setup.profile(), (x[: request.local.batch_size], y[: request.local.batch_size]))
    engine = InProcessEngine(template, InMemoryClients(x, y, _OwnSamples(setup.client_id, len(x))),
                             vectorize=config.vectorize)
    result = engine.train(start, [setup.client_id], request.rnd, request.local)
    payload = uplink_payload(request, config, setup, wire_update(request, config, template, start, result))
    return TrainReply(setup.client_id, int(result.updates.num_samples[0]), float(result.train_loss[0]), payload,
                      time.perf_counter() - t0)


def wire_update(request: TrainRequest, config: RunConfig, template: Any, start: dict[str, Tensor], result: RoundResult
                ) -> dict[str, Tensor] | list[tuple[int, float]]:
    """The update in the form it travels, as the simulator's server would have turned it into its wire form.

    MeZO's (seed, g) pairs (seed exchange), or its coefficients on the round's seed pool (mixed runs:
    ``Expansion.zo_wire``, computed here so the bytes that travel are the ones the simulator counts), or the
    change of the trained tensors (LoRA's B factors under their wire names).
    """
    from pocketlearn.federated.checks import is_mixed
    from pocketlearn.federated.mixed import Expansion

    seeds = result.wire.histories if isinstance(result.wire, SeedPairs) else None
    if request.up_codec == SEEDS:
        if seeds is None:
            raise ConfigError(f"seed exchange needs a client that sends seeds; method {request.local.method!r} "
                              "sends its update")
        return list(seeds[0])
    if seeds is not None and is_mixed(config):
        expansion = Expansion.build(template, start, {request.local.method: request.local.method_options()})
        return expansion.zo_wire(result.updates, seeds).client_delta(0)
    return result.updates.client_delta(0)


def uplink_payload(request: TrainRequest, config: RunConfig, setup: DeviceSetup,
                   update: dict[str, Tensor] | list[tuple[int, float]]) -> bytes:
    """The bytes that leave the device, in the order clip → noise (local DP) → add residual → encode.

    The simulator encodes first and privatizes on the server; with the float32 codec and no error feedback
    both orders give the same bits. With a lossy codec or error feedback a deployed run differs from its
    simulation (same distribution, other draws): the device must noise before anything leaves it.
    """
    from pocketlearn.federated.codecs import encode_dense, make_codec
    from pocketlearn.federated.codecs.seeds import encode_history
    from pocketlearn.federated.uplink import uplink_stream

    if isinstance(update, list):
        if request.local_dp is not None:  # the server would replay them un-noised
            raise ConfigError("local DP cannot noise MeZO's (seed, g) pairs; run it with codec.up = 'float32'")
        return encode_history(update)
    if request.local_dp is not None:
        update = request.local_dp.apply(setup.client_id, update)
    codec = make_codec(request.up_codec)
    rng = uplink_stream(request.codec_seed, request.rnd, setup.client_id)
    if request.error_feedback and codec.stages:
        return Residuals(setup, config, request.run_id).encode(codec, request.rnd, update, rng)
    return codec.encode(update, rng) if codec.stages else encode_dense(update)


class Residuals:
    """Error feedback's residual of this device's client, in a file next to its examples (one per server run).

    Kept by round: a round the server sends again after a crash (it resumes from the round before) starts from
    the residual left by this client's latest round before it, not from the lost attempt's; the file keeps
    those two. Written atomically, so a device killed mid-write keeps the previous file.
    """

    def __init__(self, setup: DeviceSetup, config: RunConfig, run_id: str):
        from pocketlearn.federated.server import fingerprint

        self.folder, self.config = setup.data_path.with_name(setup.data_path.name + ".feedback"), \
            fingerprint(config.model_dump())
        self.path, self.client = self.folder / f"{self.config}-{run_id}.pt", setup.client_id

    def load(self) -> dict[int, dict[str, Tensor]]:
        """Residuals by the round that left them (empty before this client's first round of the run)."""
        from pocketlearn.checkpoint import load_checkpoint

        if not self.path.exists():
            return {}
        state = load_checkpoint(self.path)
        if state.get("client") != self.client:
            raise ConfigError(f"{self.path} holds client {state.get('client')}'s residuals, this device is client "
                              f"{self.client}; delete the file (error feedback then starts from zero)")
        return {int(r): dict(t) for r, t in state["residuals"].items()}

    def encode(self, codec: Any, rnd: int, update: dict[str, Tensor], rng: np.random.Generator) -> bytes:
        """The payload of ``update`` plus the residual from before round ``rnd``; stores round ``rnd``'s."""
        from pocketlearn.checkpoint import save_checkpoint
        from pocketlearn.federated.codecs import ErrorFeedback

        kept = self.load()
        before = max((r for r in kept if r < rnd), default=None)
        feedback = ErrorFeedback()
        if before is not None:
            feedback.load_state_dict({self.client: kept[before]})
        payload, _ = feedback.encode(codec, self.client, update, rng)
        residuals = {rnd: feedback.residuals[self.client]} | ({before: kept[before]} if before is not None else {})
        save_checkpoint(self.path, {"client": self.client, "residuals": residuals})
        for stale in self.folder.glob(f"{self.config}-*.pt"):  # the same config's earlier runs (--fresh)
            if stale != self.path:
                stale.unlink(missing_ok=True)
        return payload


def check_budget(template: Any, request: TrainRequest, device: DeviceProfile, batch: Any) -> int:
    """The method's estimated peak on this device; a BudgetError (naming the fix) when it does not fit."""
    from pocketlearn.methods import make_method
    from pocketlearn.trainer import LocalTrainer

    options: dict[str, Any] = request.local.method_options()
    method = make_method(request.local.method, copy.deepcopy(template), **options)
    return LocalTrainer(method, device=device).check_budget(batch)
