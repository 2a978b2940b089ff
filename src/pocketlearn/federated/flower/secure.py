"""Secure aggregation between real devices: the protocol's four exchanges as Flower messages.

The round runs the same protocol objects as ``fed simulate`` (:mod:`pocketlearn.federated.secagg`), but each
party is where it would be in production:

1. ``train.secagg``: the device trains, keeps its update and fresh secrets in its ``Context.state`` (on the
   device), and answers with its public keys only.
2. ``query.secagg_share``: the server numbers the devices that answered, sends each the round's parameters and
   its neighbours' keys; the device answers with its secrets' shares, sealed per neighbour.
3. ``query.secagg_mask``: each device gets its inbox of sealed shares and its sample weight, and answers with its
   weighted update masked; the server only adds these up.
4. ``query.secagg_unmask``: survivors reveal the shares that remove the masks; the server learns the sum.

A device that stops answering at any step is left out as the protocol allows (its masks are removed with the
others' shares); a reply that does not parse is treated the same, and if too few remain the round applies no
update. The bytes counted are those of the protocol's messages, as the simulator counts them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

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

SECURE_TRAIN, SHARE, MASK, UNMASK = "train.secagg", "query.secagg_share", "query.secagg_mask", "query.secagg_unmask"
STATE = "pocketlearn-secagg"  # the device's Context.state record between the four messages


@dataclass(frozen=True)
class RoundSpec:
    """What every party of one secure round agrees on; a device rebuilds the protocol's config from it."""

    rnd: int
    num_clients: int
    threshold: int
    clip: float
    vector_size: int
    neighbours: int | None = None
    bits: int = 32

    def config(self) -> SecAggConfig:
        """The graph is drawn from the round number, as in the simulator, so every party derives the same one."""
        return SecAggConfig(self.threshold, FieldSpec(self.clip, self.num_clients, self.bits), self.vector_size,
                            neighbour_graph(self.num_clients, self.neighbours, self.rnd))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RoundSpec:
        return cls(**json.loads(text))


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
    delta = make_codec(request.up_codec).decode(reply.payload)
    names = sorted(delta)
    vector = np.concatenate([delta[n].detach().reshape(-1).float().numpy() for n in names])
    secrets = ClientSecrets.generate()
    state[STATE] = ConfigRecord({"round": request.rnd, "secrets": secrets.to_bytes(), "vector": vector.tobytes()})
    records = replace(reply, payload=secrets.advert(request.client_id).to_bytes()).to_records()
    records["layout"] = ConfigRecord({"layout": json.dumps([[n, list(delta[n].shape)] for n in names])})
    return records


def device_share(content: Any, state: Any) -> Any:
    """Phase 2: split the secrets among the neighbours that advertised keys."""
    meta = content["meta"]
    spec = RoundSpec.from_json(str(meta["spec"]))
    stored = _stored(state, spec.rnd)
    size = len(stored["vector"]) // 4
    if size != spec.vector_size:
        raise SecAggError(f"the round aggregates {spec.vector_size} values, this device's update has {size}")
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
    # weighted in float32, as the simulator weights its stacked updates
    vector = (np.frombuffer(stored["vector"], np.float32) * np.float32(meta["weight"])).astype(np.float64)
    masked = client.masked_input(vector, inbox)
    stored["client"] = client.export_state()
    return _records({"round": int(meta["round"])}, masked.to_bytes())


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
class _Device:
    client: int
    node: int
    position: int
    reply: Any  # its TrainReply (payload: its key advert)
    advert: KeyAdvert
    sent: int = 0
    received: int = 0


class SecureRound:
    """One round of secure aggregation driven through a :class:`FlowerEngine` (its grid, timeouts, bookkeeping)."""

    def __init__(self, engine: Any, rnd: int):
        self.engine, self.rnd = engine, rnd
        self.cfg = engine.server.policy.secagg
        self.devices: dict[int, _Device] = {}  # by position in the round

    def run(self, params: Mapping[str, Any], client_ids: list[int], local: Any) -> Any:
        """Train, then aggregate securely; the result holds the mean as one row (or nothing if it failed)."""
        layout = self._train(params, client_ids, local)
        try:
            if len(self.devices) < 2:
                raise SecAggError(f"{len(self.devices)} device(s) trained; secure aggregation needs at least 2")
            total, survivors = self._aggregate(layout)
        except (SecAggError, ConfigError) as err:
            self._say(f"secure aggregation failed ({err}); this round applies no update")
            return self._result(params, [], None)
        return self._result(params, survivors, self._mean(total, layout, survivors))

    def _say(self, line: str) -> None:
        self.engine.say(f"round {self.rnd}: {line}")

    # --- phase 1 ----------------------------------------------------------------------------------------------
    def _train(self, params: Mapping[str, Any], client_ids: list[int], local: Any) -> list[tuple[str, tuple]]:
        engine = self.engine
        sent = engine.train_messages(params, client_ids, self.rnd, local, engine.server.policy.uplink.spec,
                                     SECURE_TRAIN)
        layouts: dict[str, list[tuple[int, Any, KeyAdvert, Any]]] = {}
        for (c, message), (_, reply, after) in zip(sent, engine._exchange([m for _, m in sent],
                                                                             engine.round_timeout_s), strict=True):
            answer = engine._accept(c, reply, self.rnd, after)
            if answer is None:
                continue
            try:
                advert = KeyAdvert.from_bytes(answer.payload)
                layout = str(reply.content["layout"]["layout"])
            except (SecAggError, KeyError, TypeError) as err:
                self._say(f"client {c} sent no usable public keys ({err}); left out")
                continue
            layouts.setdefault(layout, []).append((c, message.metadata.dst_node_id, advert, answer))
        if not layouts:
            return []
        agreed = max(layouts, key=lambda k: len(layouts[k]))  # every honest device reports the model's layout
        for other in set(layouts) - {agreed}:
            self._say(f"clients {[c for c, *_ in layouts[other]]} trained other parameters than the rest; left out")
        for position, (c, node, advert, answer) in enumerate(sorted(layouts[agreed], key=lambda t: t[0])):
            self.devices[position] = _Device(c, node, position, answer, advert, sent=len(answer.payload))
        return [(name, tuple(shape)) for name, shape in json.loads(agreed)]

    # --- phases 2-4 -------------------------------------------------------------------------------------------
    def _aggregate(self, layout: list[tuple[str, tuple]]) -> tuple[np.ndarray, list[int]]:
        n = len(self.devices)
        spec = RoundSpec(self.rnd, n, max(1, math.ceil(self.cfg.threshold * n)), self.cfg.clip,
                         sum(math.prod(shape) for _, shape in layout), self.cfg.neighbours)
        config = spec.config()
        server = SecAggServer(config)
        routed = server.receive_adverts([replace(d.advert, client=u) for u, d in self.devices.items()])
        replies = self._phase(SHARE, {u: ({"spec": spec.to_json(), "position": u},
                                          b"".join(a.to_bytes() for a in routed[u].values())) for u in routed})
        shares = [m for u, raw in replies.items() if (m := self._parse(u, raw, KeyShares.from_bytes, config))]
        inbox = server.route_shares(shares)
        counts = np.array([self.devices[u].reply.num_samples for u in sorted(inbox)], dtype=np.float32)
        weights = dict(zip(sorted(inbox), (counts / counts.sum()).tolist(), strict=True))  # float32, as simulated
        replies = self._phase(MASK, {u: ({"round": self.rnd, "weight": weights[u]},
                                         b"".join(e.to_bytes() for e in inbox[u])) for u in inbox})
        for u, raw in replies.items():
            masked = self._parse(u, raw, lambda b: MaskedInput.from_bytes(b, config.field.dtype, spec.vector_size),
                                 config)
            if masked is not None:
                server.receive_masked(masked)
        request = server.unmask_request()
        replies = self._phase(UNMASK, {u: ({"round": self.rnd}, request.to_bytes()) for u in request.survivors})
        responses = [r for u, raw in replies.items() if (r := self._parse(u, raw, UnmaskResponse.from_bytes, config))]
        total = server.aggregate(responses)
        survivors = sorted(request.survivors)
        if len(survivors) < len(inbox):  # the weights were shared out over more clients than are in the sum
            total = total * (float(counts.sum()) / sum(self.devices[u].reply.num_samples for u in survivors))
        return total, survivors

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
        for u, (_, reply, _) in zip(positions, engine._exchange(messages, engine.round_timeout_s), strict=True):
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

    # --- the result the server loop takes ---------------------------------------------------------------------
    def _mean(self, total: np.ndarray, layout: list[tuple[str, tuple]], survivors: list[int]) -> Any:
        import torch

        from pocketlearn.federated.updates import RoundUpdates

        flat = torch.from_numpy(total)
        sizes = [math.prod(shape) for _, shape in layout]
        rows = {name: part.view(shape).to(torch.float32).unsqueeze(0)
                for (name, shape), part in zip(layout, flat.split(sizes), strict=True)}
        samples = torch.tensor([float(self.devices[u].reply.num_samples) for u in survivors])
        return RoundUpdates([-1], samples.sum().view(1), rows)

    def _result(self, params: Mapping[str, Any], survivors: list[int], mean: Any) -> Any:
        import torch

        from pocketlearn.federated.simulate import RoundResult, SecureMean
        from pocketlearn.federated.updates import RoundUpdates

        everyone = self.devices.values()
        secure = SecureMean(mean, sum(d.sent for d in everyone), sum(d.received for d in everyone)) \
            if mean is not None else None
        k = len(survivors)
        rows = {name: p.new_zeros(()).expand(k, *p.shape) for name, p in params.items()}  # the server never has them
        updates = RoundUpdates([self.devices[u].client for u in survivors],
                               torch.tensor([float(self.devices[u].reply.num_samples) for u in survivors]), rows)
        losses = torch.tensor([self.devices[u].reply.loss for u in survivors])
        return RoundResult(updates, losses, None, [self.devices[u].sent for u in survivors], secure)
