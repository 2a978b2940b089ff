"""Secure aggregation between real devices: the protocol's four exchanges as Flower messages.

The round runs the same protocol objects as ``fed simulate`` (:mod:`pocketlearn.federated.secagg`), but each
party is where it would be in production:

1. ``train.secagg``: the device trains, keeps its update and fresh secrets in its ``Context.state`` (on the
   device), and answers with its public keys and which tensors it trained (their names and shapes) only.
2. ``query.secagg_share``: the server numbers the devices of a protocol group, sends each the group's
   parameters and its neighbours' keys; the device answers with its secrets' shares, sealed per neighbour.
3. ``query.secagg_mask``: each device gets its inbox of sealed shares and its sample weight, and answers with its
   weighted update masked; the server only adds these up. Under DP (``dp-fedavg``) the round is distributed DP
   (:mod:`pocketlearn.federated.privacy.distributed`): the spec carries the round's :class:`NoiseShare`, and each
   device instead clips its update, rounds it to the ring and adds its own noise share, drawn from its own OS
   randomness, before masking; the server unmasks only the noisy sum of unweighted clipped updates.
4. ``query.secagg_unmask``: survivors reveal the shares that remove the masks; the server learns the sum.

A device that stops answering at any step is left out as the protocol allows (its masks are removed with the
others' shares); a reply that does not parse is treated the same, and if too few remain the group's sum is
lost (the round applies no update from it). In a mixed-method round the devices of each method form one group
(a method with a lone device joins another group, as in ``federated.mixed.secure_combine``) and each device
places its wire tensors in the group's layout, zeros elsewhere. The bytes counted are those of the protocol's
messages, as the simulator counts them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketlearn.errors import ConfigError, PocketlearnError
from pocketlearn.federated.secagg import (
    ClientSecrets,
    FieldSpec,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    neighbour_graph,
    round_thresholds,
)
from pocketlearn.federated.secagg.messages import (
    ADVERT_BYTES,
    SHARE_MESSAGE_BYTES,
    EncryptedShare,
    KeyAdvert,
    KeyShares,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    split_records,
)

if TYPE_CHECKING:
    from pocketlearn.federated.flower.engine import FlowerEngine
    from pocketlearn.federated.mixed import Expansion
    from pocketlearn.federated.round import RoundPlan, RoundResult, SecureOutcome, SecurePlan
    from pocketlearn.federated.updates import RoundUpdates

SECURE_TRAIN, SHARE, MASK, UNMASK = "train.secagg", "query.secagg_share", "query.secagg_mask", "query.secagg_unmask"
STATE = "pocketlearn-secagg"  # the device's Context.state record between the four messages
Layout = list[tuple[str, tuple[int, ...]]]  # the tensors of a vector, in order, with their shapes


@dataclass(frozen=True)
class RoundSpec:
    """What every party of one protocol group agrees on; a device rebuilds the protocol's config from it."""

    rnd: int
    num_clients: int
    threshold: int
    clip: float
    layout: Layout
    neighbours: int | None = None
    graph_seed: int = 0
    bits: int = 32
    dp: dict[str, Any] | None = None  # distributed DP: the round's NoiseShare (public), drawn on each device
    min_survivors: int = 0  # masked inputs needed before the sum is unmasked

    @property
    def vector_size(self) -> int:
        return sum(math.prod(shape) for _, shape in self.layout)

    def config(self) -> SecAggConfig:
        """The graph is drawn from ``graph_seed``, as in the simulator, so every party derives the same one."""
        return SecAggConfig(self.threshold, FieldSpec(self.clip, self.num_clients, self.bits), self.vector_size,
                            neighbour_graph(self.num_clients, self.neighbours, self.graph_seed), self.min_survivors)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RoundSpec:
        fields = json.loads(text)
        fields["layout"] = _layout(fields["layout"])
        return cls(**fields)


def _layout(raw: Any) -> Layout:
    return [(str(name), tuple(int(x) for x in shape)) for name, shape in raw]


# --- the device's side -------------------------------------------------------------------------------------------
def _records(meta: Mapping[str, Any], payload: bytes) -> Any:
    from flwr.app import ConfigRecord, RecordDict

    from pocketlearn.federated.flower.messages import _payload_record

    return RecordDict({"meta": ConfigRecord(dict(meta)), "payload": _payload_record(payload)})


def _payload(content: Any) -> bytes:
    from pocketlearn.federated.flower.messages import _payload_bytes

    return _payload_bytes(content["payload"])


def _stored(state: Any, rnd: int) -> Any:
    if STATE not in state:
        raise SecAggError(f"this device holds no secure-aggregation state for round {rnd} (it restarted, or the "
                          "message came out of order); it sits this round out")
    stored = state[STATE]
    if int(stored["round"]) != rnd:
        raise SecAggError(f"this device's secure-aggregation state is of round {stored['round']}, not {rnd}; it sits "
                          "this round out")
    return stored


def device_train(content: Any, state: Any, train: Callable[[Any], Any]) -> Any:
    """Phase 1: train, keep the update and fresh secrets on the device, answer with the public keys."""
    from flwr.app import ConfigRecord

    from pocketlearn.federated.codecs import make_codec
    from pocketlearn.federated.flower.messages import TrainRequest

    request = TrainRequest.from_records(content)
    reply = train(request)
    delta = make_codec(request.up_codec).decode(reply.payload)  # what the simulator's server would decode
    names = sorted(delta)
    vector = np.concatenate([delta[n].detach().reshape(-1).float().numpy() for n in names])
    layout = json.dumps([[n, list(delta[n].shape)] for n in names])
    secrets = ClientSecrets.generate()
    state[STATE] = ConfigRecord({"round": request.rnd, "secrets": secrets.to_bytes(), "vector": vector.tobytes(),
                                 "layout": layout})
    records = replace(reply, payload=secrets.advert(request.client_id).to_bytes()).to_records()
    records["layout"] = ConfigRecord({"layout": layout})
    return records


def _embedded(own: bytes, own_layout: Layout, layout: Layout) -> np.ndarray:
    """The device's update placed in the group's layout (zeros for tensors it did not train)."""
    mine = dict(own_layout)
    if missing := sorted(set(mine) - {n for n, _ in layout}):
        raise SecAggError(f"the group's layout leaves out tensors this device trained: {missing}")
    values = np.frombuffer(own, np.float32)
    offsets = dict(zip(mine, np.cumsum([0, *(math.prod(s) for s in mine.values())]).tolist(), strict=False))
    parts = []
    for name, shape in layout:
        size = math.prod(shape)
        if name not in mine:
            parts.append(np.zeros(size, np.float32))
        elif mine[name] != shape:
            raise SecAggError(f"the group's layout gives {name} the shape {shape}; this device trained {mine[name]}")
        else:
            parts.append(values[offsets[name]:offsets[name] + size])
    return np.concatenate(parts)


def device_share(content: Any, state: Any) -> Any:
    """Phase 2: split the secrets among the neighbours that advertised keys."""
    meta = content["meta"]
    spec = RoundSpec.from_json(str(meta["spec"]))
    stored = _stored(state, spec.rnd)
    stored["vector"] = _embedded(stored["vector"], _layout(json.loads(str(stored["layout"]))), spec.layout).tobytes()
    adverts = [KeyAdvert.from_bytes(r) for r in split_records(_payload(content), ADVERT_BYTES, "neighbours' keys")]
    client = SecAggClient(int(meta["position"]), spec.config(), ClientSecrets.from_bytes(stored["secrets"]))
    shares = client.share_keys({a.client: a for a in adverts})
    stored["spec"], stored["client"] = spec.to_json(), client.export_state()
    return _records({"round": spec.rnd}, shares.to_bytes())


def device_mask(content: Any, state: Any) -> Any:
    """Phase 3: the weighted update, masked with every neighbour whose shares arrived."""
    meta = content["meta"]
    stored = _stored(state, int(meta["round"]))
    client = SecAggClient.restore(stored["client"], RoundSpec.from_json(str(stored["spec"])).config())
    inbox = [EncryptedShare.from_bytes(r) for r in split_records(_payload(content), SHARE_MESSAGE_BYTES, "inbox")]
    spec = RoundSpec.from_json(str(stored["spec"]))
    if spec.dp is not None:
        vector = _noised(spec, np.frombuffer(stored["vector"], np.float32))
    else:  # weighted in float32, as the simulator weights its stacked updates
        vector = (np.frombuffer(stored["vector"], np.float32) * np.float32(meta["weight"])).astype(np.float64)
    masked = client.masked_input(vector, inbox)
    stored["client"] = client.export_state()
    return _records({"round": int(meta["round"])}, masked.to_bytes())


def _noised(spec: RoundSpec, vector: np.ndarray) -> np.ndarray:
    """Distributed DP's device step: clip, round to the ring, add this device's noise share from the OS CSPRNG.

    The share is drawn here and kept nowhere; the server cannot regenerate it. The spec's plan must describe
    this very round (its ring and size), else the device refuses rather than add noise sized for another.
    """
    from pocketlearn.federated.privacy.distributed import BITS, NoiseShare
    from pocketlearn.federated.privacy.noise import secure_generator

    plan = NoiseShare.from_dict(spec.dp or {})
    if (plan.num_clients, plan.threshold, plan.dim, BITS) != (spec.num_clients, spec.min_survivors,
                                                               spec.vector_size, spec.bits) \
            or not math.isclose(plan.field_range, spec.clip):
        raise SecAggError(f"round {spec.rnd}: the distributed-DP plan ({plan}) does not match the protocol's round "
                          f"({spec.num_clients} clients, {spec.min_survivors} survivors needed, {spec.vector_size} "
                          f"values, range {spec.clip}); this device sits the round out")
    return plan.apply(vector, secure_generator())


def device_unmask(content: Any, state: Any) -> Any:
    """Phase 4: reveal what removes the masks (once), then forget the round."""
    rnd = int(content["meta"]["round"])
    stored = _stored(state, rnd)
    client = SecAggClient.restore(stored["client"], RoundSpec.from_json(str(stored["spec"])).config())
    request = UnmaskRequest.from_bytes(_payload(content))
    response = client.unmask_shares(request.survivors, request.dropped)
    del state[STATE]
    return _records({"round": rnd}, response.to_bytes())


# --- the server's side -------------------------------------------------------------------------------------------
@dataclass
class TrainedDevice:
    """A device that trained this round and advertised keys: what the server knows of it (no update)."""

    client: int
    node: int
    reply: Any  # its TrainReply (payload: its key advert)
    advert: KeyAdvert
    layout: Layout
    sent: int = 0
    received: int = 0


def train_devices(engine: FlowerEngine, plan: RoundPlan) -> list[TrainedDevice]:
    """Phase 1 for one method group: the devices that trained and sent usable keys and a layout."""
    rnd = plan.rnd
    expected = {n: tuple(s) for n, s in plan.wire_shapes.items()}
    sent = engine.train_messages(plan, plan.uplink, SECURE_TRAIN)
    devices = []
    for (c, message), (_, reply, after) in zip(sent, engine.exchange([m for _, m in sent], engine.round_timeout_s),
                                               strict=True):
        answer = engine.accept(c, reply, rnd, after)
        if answer is None:
            continue
        try:
            advert = KeyAdvert.from_bytes(answer.payload)
            layout = _layout(json.loads(str(reply.content["layout"]["layout"])))
        except (PocketlearnError, KeyError, TypeError, ValueError) as err:
            engine.say(f"round {rnd}: client {c} sent no usable public keys ({err}); left out")
            continue
        if not layout or any(expected.get(n) != shape for n, shape in layout):
            engine.say(f"round {rnd}: client {c} says it trained tensors this round does not train; left out")
            continue
        devices.append(TrainedDevice(c, message.metadata.dst_node_id, answer, advert, layout,
                                     sent=len(answer.payload)))
    return devices


class SecureSum:
    """Phases 2-4 over one group of devices: the sum of their weighted updates, and nothing else of them.

    Client u's weight is n_u / ``total`` (float32, as the simulator weights), so sums of several groups add up
    to a round's weighted total. Raises SecAggError if the group cannot be completed safely.
    """

    def __init__(self, engine: FlowerEngine, rnd: int, devices: Sequence[TrainedDevice], secure: SecurePlan, *,
                 total: float, graph_seed: int):
        self.engine, self.rnd, self.total, self.graph_seed = engine, rnd, total, graph_seed
        self.cfg = secure
        self.dp = secure.dp  # None without DP
        self.devices = dict(enumerate(sorted(devices, key=lambda d: d.client)))  # by position in the protocol

    def run(self) -> tuple[dict[str, Any], list[TrainedDevice]]:
        """The weighted sum per tensor of the group's layout (float64), and the devices in it."""
        n = len(self.devices)
        if n < 2:
            raise SecAggError(f"{n} device(s) in a protocol group; secure aggregation needs at least 2")
        layout = sorted({t for d in self.devices.values() for t in d.layout})
        shares, survivors = round_thresholds(self.cfg.threshold, n, self.cfg.neighbours)
        spec = RoundSpec(self.rnd, n, shares, self.cfg.clip, layout, self.cfg.neighbours, self.graph_seed,
                         min_survivors=survivors)
        if self.dp is not None:  # the ring and the noise shares of distributed DP (checks the budget first)
            plan = self.dp.plan(n, self.cfg.threshold, spec.vector_size)
            spec = replace(spec, clip=plan.field_range, dp=plan.to_dict())
        config = spec.config()
        server = SecAggServer(config)
        routed = server.receive_adverts([replace(d.advert, client=u) for u, d in self.devices.items()])
        replies = self._phase(SHARE, {u: ({"spec": spec.to_json(), "position": u},
                                          b"".join(a.to_bytes() for a in routed[u].values())) for u in routed})
        inbox = server.route_shares(m for u, raw in replies.items() if (m := self._parse(u, raw, KeyShares.from_bytes,
                                                                                          config)))
        weights = dict(zip(inbox, self._weights([self.devices[u].reply.num_samples for u in inbox]), strict=True))
        replies = self._phase(MASK, {u: ({"round": self.rnd, "weight": weights[u]},
                                         b"".join(e.to_bytes() for e in inbox[u])) for u in inbox})
        for u, raw in replies.items():
            masked = self._parse(u, raw, lambda b: MaskedInput.from_bytes(b, config.field.dtype, spec.vector_size),
                                 config)
            if masked is not None:
                server.receive_masked(masked)
        request = server.unmask_request()
        replies = self._phase(UNMASK, {u: ({"round": self.rnd}, request.to_bytes()) for u in request.survivors})
        total = server.aggregate(r for u, raw in replies.items()
                                 if (r := self._parse(u, raw, UnmaskResponse.from_bytes, config)))
        parts = np.split(total, np.cumsum([math.prod(s) for _, s in layout])[:-1])
        sums = {name: part.reshape(shape) for (name, shape), part in zip(layout, parts, strict=True)}
        return sums, [self.devices[u] for u in sorted(request.survivors)]

    def _weights(self, samples: list[int]) -> list[float]:
        """n_u / total computed as the simulator scales its stacked float32 updates (same bits); 1 under DP."""
        import torch

        if self.dp is not None:  # distributed DP: uniform weights (sample counts would raise the sensitivity)
            return [1.0] * len(samples)
        return (torch.tensor([float(n) for n in samples]) / self.total).tolist()

    def _say(self, line: str) -> None:
        self.engine.say(f"round {self.rnd}: {line}")

    def _phase(self, message_type: str, work: Mapping[int, tuple[dict[str, Any], bytes]]) -> dict[int, bytes]:
        """Send each position its (meta, payload); the payloads of the well-formed replies, by position."""
        from flwr.app import Message

        engine = self.engine
        messages, positions = [], []
        for u, (meta, payload) in work.items():
            device = self.devices[u]
            device.received += len(payload)
            engine.traffic.add(device.client, down=len(payload))
            messages.append(Message(_records(meta, payload), dst_node_id=device.node, message_type=message_type,
                                    group_id=str(self.rnd), ttl=engine.round_timeout_s))
            positions.append(u)
        out = {}
        for u, (_, reply, _) in zip(positions, engine.exchange(messages, engine.round_timeout_s), strict=True):
            client = self.devices[u].client
            if reply is None or reply.has_error():
                why = "no answer" if reply is None else reply.error.reason
                self._say(f"client {client} dropped out of secure aggregation at {message_type} ({why})")
                continue
            try:
                out[u] = _payload(reply.content)
            except (KeyError, TypeError, ValueError) as err:
                self._say(f"client {client} sent a malformed {message_type} reply ({err}); treated as dropped")
                continue
            self.devices[u].sent += len(out[u])
            engine.traffic.add(client, up=len(out[u]))
        return out

    def _parse(self, u: int, raw: bytes, parse: Callable[[bytes], Any], config: SecAggConfig) -> Any:
        """A reply's protocol message, if it parses and speaks for the position it came from (else None)."""
        try:
            message = parse(raw)
        except PocketlearnError as err:
            self._say(f"client {self.devices[u].client} sent an unreadable message ({err}); treated as dropped")
            return None
        shares = getattr(message, "shares", ())
        if message.client != u or any(e.sender != u or e.receiver not in config.graph[u] for e in shares):
            self._say(f"client {self.devices[u].client} sent a message in another client's name; treated as dropped")
            return None
        return message


# --- what the server loop takes ----------------------------------------------------------------------------------
def secure_mean(engine: FlowerEngine, devices: list[TrainedDevice], secure: SecurePlan, rnd: int) -> SecureOutcome:
    """A single-method round's phases 2-4: the mean as one row (under DP the noisy sum); row None if it failed."""
    from pocketlearn.federated.round import SecureOutcome

    total = float(np.float32(sum(d.reply.num_samples for d in devices)))
    try:
        sums, survivors = SecureSum(engine, rnd, devices, secure, total=total, graph_seed=rnd).run()
    except (SecAggError, ConfigError) as err:
        if secure.dp is not None:
            from pocketlearn.federated.privacy.accountant import PrivacyBudgetError

            if isinstance(err, PrivacyBudgetError):  # the run must stop, not skip a round
                raise
        return SecureOutcome(None, 0, 0, 0, failure=f"secure aggregation failed: {err}")
    share = sum(d.reply.num_samples for d in survivors) / total  # 1 unless a device dropped after training
    if secure.dp is not None:  # the noisy sum; the server divides by the expected clients
        share = 1
    mean = {n: s / share if share != 1 else s for n, s in sums.items()}
    from pocketlearn.federated.mixed import one_row

    samples = float(sum(d.reply.num_samples for d in survivors))
    return SecureOutcome(one_row(_tensors(mean), samples), sum(d.sent for d in devices),
                        sum(d.received for d in devices), len(survivors))


def placeholders(shapes: Mapping[str, Any], finished: list[TrainedDevice]) -> RoundResult:
    """The devices that trained, as the server loop reads them: who finished, with zero rows (never their update)."""
    import torch

    from pocketlearn.federated.round import Payloads, RoundResult
    from pocketlearn.federated.updates import RoundUpdates

    k = len(finished)
    rows = {n: torch.zeros(()).expand(k, *(s.shape if hasattr(s, "shape") else s)) for n, s in shapes.items()}
    updates = RoundUpdates([d.client for d in finished], torch.tensor([float(d.reply.num_samples) for d in finished]),
                           rows)
    return RoundResult(updates, torch.tensor([d.reply.loss for d in finished]), Payloads([d.sent for d in finished]))


def _tensors(sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {n: torch.from_numpy(np.ascontiguousarray(s)).to(torch.float32) for n, s in sums.items()}


def secure_combine(engine: FlowerEngine, groups: list[tuple[str, RoundUpdates]], expansion: Expansion,
                   pending: Mapping[int, TrainedDevice], secure: SecurePlan, rnd: int) -> SecureOutcome:
    """A mixed round's devices aggregated in protocol groups, combined by ``federated.mixed``'s rule.

    ``groups``: (method, placeholder rows of the devices that trained); ``pending``: those devices by client.
    Returns the combined mean as one row and the protocol's bytes, as :func:`federated.mixed.secure_combine`.
    """
    from pocketlearn.federated.mixed import one_row, protocol_groups
    from pocketlearn.federated.round import SecureOutcome

    total = float(sum(float(u.num_samples.sum()) for _, u in groups))
    method_of = {c: m for m, u in groups for c in u.client_ids}
    sums: dict[str, dict[str, Any]] = {m: {} for m, _ in groups}
    samples = dict.fromkeys(sums, 0.0)  # per method, of the devices whose updates are in a sum
    for i, (methods, u) in enumerate(protocol_groups(groups)):
        try:
            group_sums, survivors = SecureSum(engine, rnd, [pending[c] for c in u.client_ids], secure, total=total,
                                              graph_seed=rnd * 101 + i).run()  # the simulator's graphs
        except (SecAggError, ConfigError) as err:
            engine.say(f"round {rnd}: secure aggregation of {'+'.join(methods)} failed ({err}); its updates are lost")
            continue
        sums[methods[0]] = _tensors(group_sums)
        for d in survivors:
            samples[method_of[d.client]] += d.reply.num_samples
    everyone = list(pending.values())
    means = expansion.combine(sums, {m: n / total for m, n in samples.items()})
    return SecureOutcome(one_row(means, total), sum(d.sent for d in everyone), sum(d.received for d in everyone),
                        sum(len(u) for _, u in groups))
