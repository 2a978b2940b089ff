"""An :class:`~pocketlearn.federated.round.Engine` whose clients are real devices behind a Flower SuperLink.

The server loop stays the simulator's: it samples, calls ``run(params, plan)`` once per method group with a
:class:`~pocketlearn.federated.round.RoundPlan`, aggregates, evaluates and checkpoints. This engine reads
nothing of the server but that plan; it turns each call into one Flower ``train``
message per sampled client, sent to the SuperNode that holds the client's examples (learned once per node
with a ``query`` message), and waits for replies until the round's timeout: a device that dies or is late is
left out of the round, the others' updates are aggregated. What travels are our codec payloads, so the bytes
counted are ``len(payload)`` of what crossed the network.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from pocketlearn.errors import PocketlearnError
from pocketlearn.federated.flower.messages import QUERY, SEEDS, TRAIN, DeviceInfo, TrainReply, TrainRequest
from pocketlearn.federated.round import Payloads, RoundPlan, RoundResult, SecureOutcome, SecurePlan, SeedPairs, Wire
from pocketlearn.federated.simulate import LocalTraining
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates

if TYPE_CHECKING:
    from pocketlearn.federated.codecs import Codec
    from pocketlearn.federated.flower.secure import TrainedDevice
    from pocketlearn.federated.mixed import Expansion

log = logging.getLogger(__name__)
# What reading a device's records can raise besides our own errors: a missing key, a value of the wrong kind, a
# number out of range. Replies come from devices, so each of these leaves that device out, never ends the run.
MALFORMED = (PocketlearnError, KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


@dataclass
class Traffic:
    """Payload bytes per client over the run (what our codecs produced and Flower carried)."""

    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    device_s: dict[int, float] = field(default_factory=dict)  # wall-clock the devices reported (their handler)
    reply_s: dict[int, float] = field(default_factory=dict)  # from sending the round to its reply, per client

    def add(self, client: int, *, down: int = 0, up: int = 0, seconds: float = 0.0, reply_s: float = 0.0) -> None:
        self.down[client] = self.down.get(client, 0) + down
        self.up[client] = self.up.get(client, 0) + up
        self.device_s[client] = self.device_s.get(client, 0.0) + seconds
        self.reply_s[client] = self.reply_s.get(client, 0.0) + reply_s

    def to_json(self) -> dict[str, Any]:
        return {"bytes_down": {str(c): b for c, b in sorted(self.down.items())},
                "bytes_up": {str(c): b for c, b in sorted(self.up.items())},
                "device_s": {str(c): round(s, 3) for c, s in sorted(self.device_s.items())},
                "reply_s": {str(c): round(s, 3) for c, s in sorted(self.reply_s.items())}}


class FlowerEngine:
    """Trains a round's clients on the SuperNodes that hold them, through a Flower ``Grid``."""

    # A resumed run starts once no device joined for this long (wait_for_devices). A SuperNode that lost its
    # server retries with exponential backoff of up to 20 s (flwr's MAX_RETRY_DELAY), plus jitter: settling
    # sooner starts the run without devices that are alive and only between two retries.
    resume_settle_s: float = 45.0
    on_devices: ClassVar[bool] = True  # devices encode, noise and mask their own updates

    def __init__(self, grid: Any, *, round_timeout_s: float, query_timeout_s: float = 60.0, poll_s: float = 0.2,
                 say: Callable[[str], None] = print):
        self.grid, self.round_timeout_s, self.query_timeout_s, self.poll_s = grid, round_timeout_s, query_timeout_s, \
            poll_s
        self.say = say
        self.devices: dict[int, DeviceInfo] = {}  # node id -> what it holds
        self.node_of: dict[int, int] = {}  # client id -> node id
        self.silent: dict[int, float] = {}  # node id -> when to ask again (it did not answer a query)
        self.misses: dict[int, int] = {}  # node id -> queries in a row it did not answer
        self.traffic = Traffic()
        self.num_clients: int | None = None  # the run's clients are 0..n-1 (set once known): others are refused
        self._pending: tuple[int, dict[int, TrainedDevice]] = (0, {})  # (round, its secure-aggregation devices)

    # --- which device holds which client ----------------------------------------------------------------------
    def discover(self, timeout_s: float | None = None) -> list[DeviceInfo]:
        """Ask SuperNodes not seen before which client they hold; forget nodes Flower no longer lists.

        A node that does not answer within the timeout is asked again later (:meth:`_ask_again_after`).
        """
        now = time.monotonic()
        online = set(self.grid.get_node_ids())
        for node in set(self.devices) - online:
            self._forget(node)
        unknown = sorted(n for n in online - set(self.devices) if self.silent.get(n, 0.0) <= now)
        if not unknown:
            return []
        from flwr.app import Message, RecordDict

        timeout_s = self.query_timeout_s if timeout_s is None else timeout_s
        messages = [Message(RecordDict(), dst_node_id=n, message_type=QUERY, ttl=self.query_timeout_s)
                    for n in unknown]
        found = []
        for message, reply, _ in self.exchange(messages, timeout_s):
            node = message.metadata.dst_node_id
            info, reason = None, "no reply" if reply is None else reply.error.reason if reply.has_error() else ""
            if not reason:
                try:
                    info = self._check_info(DeviceInfo.from_records(reply.content))
                except MALFORMED as err:
                    reason = f"a malformed answer: {type(err).__name__}: {err}"
            if info is None:
                self.say(f"SuperNode {node} did not say which client it holds ({reason}); asking again later")
                log.warning("SuperNode %s left out until asked again: %s", node, reason)
                self.misses[node] = self.misses.get(node, 0) + 1
                self.silent[node] = time.monotonic() + self._ask_again_after(node)
                continue
            self.silent.pop(node, None)
            self.misses.pop(node, None)
            if info.client_id in self.node_of:
                self.say(f"client {info.client_id} is now on SuperNode {node} (was {self.node_of[info.client_id]})")
                self._forget(self.node_of[info.client_id])
            self.devices[node], self.node_of[info.client_id] = info, node
            found.append(info)
        return found

    def _ask_again_after(self, node: int) -> float:
        """Seconds until a node that did not answer is asked again.

        A first miss soon (its worker may have been busy with a task of a crashed run); after that only in
        ``5 * query_timeout_s``, so a dead node Flower still lists does not hold up every round.
        """
        return min(5.0, self.query_timeout_s) if self.misses[node] == 1 else 5 * self.query_timeout_s

    def _check_info(self, info: DeviceInfo) -> DeviceInfo:
        """A device's answer if it names a client of the run and a plausible number of examples."""
        clients = self.num_clients
        if info.client_id < 0 or clients is not None and info.client_id >= clients:
            raise ValueError(f"it claims client {info.client_id}; the run's clients are 0..{(clients or 1) - 1}")
        if info.num_examples < 1:
            raise ValueError(f"it claims {info.num_examples} examples; a device holds at least one")
        return info

    def wait_for_devices(self, min_devices: int, timeout_s: float, *, settle_s: float | None = None,
                         resumed: bool = False) -> int:
        """Discover until ``min_devices`` clients have a device (or the timeout); returns how many have.

        A ``resumed`` run (past round 0) does not wait for devices that died before the crash:
        the devices still in the run are connected already, so once every node Flower lists has answered or
        stayed silent, and no new device joined for ``settle_s`` seconds (default :attr:`resume_settle_s`), it
        starts with those. A first run waits for ``min_devices``: its devices are still being started.
        """
        if settle_s is None and resumed:
            settle_s = self.resume_settle_s
        start = last_join = time.monotonic()
        deadline = start + timeout_s
        shown = -1
        while True:
            for info in self.discover(max(1.0, min(self.query_timeout_s, deadline - time.monotonic()))):
                self.say(f"device joined: client {info.client_id} ({info.num_examples} examples, {info.device})")
                last_join = time.monotonic()
            if len(self.node_of) != shown:
                shown = len(self.node_of)
                self.say(f"{shown}/{min_devices} devices connected")
            now = time.monotonic()
            if shown >= min_devices or now >= deadline:
                return shown
            if settle_s is not None and shown > 0 and now - last_join >= settle_s and self._every_node_known(now):
                self.say(f"resuming with the {shown} device(s) still in the run; the others join when they come back")
                return shown
            time.sleep(max(self.poll_s, 0.5))

    def _every_node_known(self, now: float) -> bool:
        """Every node Flower lists as online has said which client it holds, or stayed silent when asked twice."""
        online = set(self.grid.get_node_ids())
        return all(n in self.devices or self.misses.get(n, 0) >= 2 and self.silent.get(n, 0.0) > now
                   for n in online)

    def _forget(self, node: int) -> None:
        info = self.devices.pop(node, None)
        if info is not None and self.node_of.get(info.client_id) == node:
            del self.node_of[info.client_id]

    # --- one round ---------------------------------------------------------------------------------------------
    def run(self, params: dict[str, Tensor], plan: RoundPlan) -> RoundResult:
        """Send each client its round; collect the updates of those that answer before the timeout.

        Under secure aggregation this is the protocol's first step only: the devices train and advertise keys;
        :meth:`secure_mean` or :meth:`secure_combine` runs the rest once the server knows who finished.
        """
        for info in self.discover():  # devices that joined (or came back) since the last round
            self.say(f"device joined: client {info.client_id} ({info.num_examples} examples, {info.device})")
        if plan.secure is not None:
            return self._secure_train(plan)
        sent = self.train_messages(plan, SEEDS if plan.seeds else plan.uplink)
        replies = self.exchange([m for _, m in sent], self.round_timeout_s)
        accepted = [(c, r) for (c, _), (_, msg, after) in zip(sent, replies, strict=True)
                    if (r := self.accept(c, msg, plan.rnd, after)) is not None]
        return self._round_result(accepted, params, plan)

    def _secure_train(self, plan: RoundPlan) -> RoundResult:
        """Secure aggregation's first step for one method group: its devices train and send their public keys."""
        from pocketlearn.federated.flower import secure

        devices = secure.train_devices(self, plan)
        if self._pending[0] != plan.rnd:
            self._pending = (plan.rnd, {})
        self._pending[1].update((d.client, d) for d in devices)
        return secure.placeholders(plan.wire_shapes, devices)

    def secure_mean(self, finished: RoundUpdates, secure_plan: SecurePlan, rnd: int) -> SecureOutcome:
        """Phases 2-4 among the devices of ``finished``: the server learns their mean (or noisy sum) only."""
        from pocketlearn.federated.flower import secure

        return secure.secure_mean(self, [self._pending[1][c] for c in finished.client_ids], secure_plan, rnd)

    def secure_combine(self, groups: list[tuple[str, RoundUpdates]], expansion: Expansion, secure_plan: SecurePlan,
                       rnd: int) -> SecureOutcome:
        """:func:`federated.mixed.secure_combine`, with the devices running the protocol."""
        from pocketlearn.federated.flower import secure

        return secure.secure_combine(self, groups, expansion, self._pending[1], secure_plan, rnd)

    def train_messages(self, plan: RoundPlan, up_codec: str, message_type: str = TRAIN) -> list[tuple[int, Any]]:
        """(client, message) of each client a device holds: the global weights and how to train and send back."""
        from flwr.app import Message

        sent: list[tuple[int, Any]] = []
        for c in plan.client_ids:
            if c not in self.node_of:
                self.say(f"round {plan.rnd}: no device holds client {c}; it is left out")
                continue
            request = TrainRequest(plan.rnd, c, plan.local, plan.weights, plan.downlink, up_codec, plan.codec_seed,
                                   plan.local_noise, plan.error_feedback, plan.run_id)
            sent.append((c, Message(request.to_records(), dst_node_id=self.node_of[c], message_type=message_type,
                                    group_id=str(plan.rnd), ttl=self.round_timeout_s)))
            self.traffic.add(c, down=len(plan.weights))
        return sent

    def leave_out(self, c: int, rnd: int, why: str) -> None:
        """Say and log (a warning naming the node) why client ``c``'s reply is not in round ``rnd``."""
        node = self.node_of.get(c)
        self.say(f"round {rnd}: client {c} {why}; left out")
        log.warning("round %s: SuperNode %s (client %s) left out of the round: %s", rnd, node, c, why)

    def accept(self, c: int, reply: Any, rnd: int, after_s: float) -> TrainReply | None:
        """A client's reply if it is a well-formed update from that client; else say why and leave it out."""
        if reply is None:
            self.leave_out(c, rnd, f"did not answer within {self.round_timeout_s:g} s")
            return None  # (restarted, it comes back as a new node, which discover() maps to the client again)
        try:
            if reply.has_error():
                self.leave_out(c, rnd, f"failed: {reply.error.reason}")
                return None
            answer = TrainReply.from_records(reply.content)
            self._check_reply(c, answer)
        except MALFORMED as err:
            self.leave_out(c, rnd, f"sent a malformed reply ({type(err).__name__}: {err})")
            return None
        self.traffic.add(c, up=len(answer.payload), seconds=answer.seconds, reply_s=after_s)
        return answer

    def _check_reply(self, c: int, answer: TrainReply) -> None:
        """The reply's metadata must be this client's and plausible: its sample count weights the mean."""
        if answer.client_id != c:
            raise ValueError(f"asked client {c}, got an update of client {answer.client_id}")
        node = self.node_of.get(c)
        held = self.devices[node].num_examples if node in self.devices else None
        if answer.num_samples < 1 or held is not None and answer.num_samples > held:
            raise ValueError(f"it claims {answer.num_samples} samples; its device holds {held} examples")
        if not math.isfinite(answer.loss):
            raise ValueError(f"its training loss is {answer.loss}")
        if not (math.isfinite(answer.seconds) and answer.seconds >= 0):
            raise ValueError(f"it reports {answer.seconds} s of work")

    def _round_result(self, accepted: list[tuple[int, TrainReply]], params: dict[str, Tensor], plan: RoundPlan
                      ) -> RoundResult:
        """The replies as the server loop takes them: decoded updates (or seed histories) stacked by client.

        Updates decode to ``plan.wire_shapes``; in a mixed run these are the method's wire tensors, which the
        server expands to global deltas.
        """
        from pocketlearn.federated.codecs import make_codec

        seeds, expected, codec = plan.seeds, dict(plan.wire_shapes), make_codec(plan.uplink)
        updates, losses, histories, sizes = [], [], [], []
        for c, answer in accepted:
            try:
                if seeds:
                    history = self._history(c, answer, plan.local)
                    delta = {n: torch.zeros_like(p) for n, p in params.items()}  # the server replays the seeds
                else:
                    delta = self._delta(answer.payload, expected, codec)
            except MALFORMED as err:
                self.leave_out(c, plan.rnd, f"sent an update that does not decode ({type(err).__name__}: {err})")
                continue
            if seeds:
                histories.append(history)
            updates.append(ClientUpdate(c, answer.num_samples, delta))
            losses.append(answer.loss)
            sizes.append(len(answer.payload))
        wire: Wire = SeedPairs(histories) if seeds else Payloads(sizes)
        if not updates:
            empty = RoundUpdates([], torch.zeros(0), {n: torch.zeros((0, *shape)) for n, shape in expected.items()})
            return RoundResult(empty, torch.zeros(0), wire)
        return RoundResult(RoundUpdates.stack(updates), torch.tensor(losses), wire)

    def _delta(self, payload: bytes, expected: dict[str, torch.Size], codec: Codec) -> dict[str, Tensor]:
        """The update in ``payload``, decoded against ``expected`` (name -> shape) and checked again here."""
        delta = codec.decode(payload, expected)
        if unknown := sorted(set(delta) - set(expected)):  # (a method may send a subset: the rest count as zero)
            raise ValueError(f"it holds tensors {unknown[:5]} the round does not train")
        for name, t in delta.items():
            if not isinstance(t, Tensor) or t.shape != expected[name] or not t.is_floating_point():
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} is {got}, expected a float tensor of shape {tuple(expected[name])}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} holds NaN or inf")
        return delta

    def _history(self, c: int, answer: TrainReply, local: LocalTraining) -> list[tuple[int, float]]:
        """A MeZO client's (seed, g) pairs: no more than its examples allow, so replaying them is bounded work."""
        from pocketlearn.federated.codecs.seeds import decode_history

        history = decode_history(answer.payload)
        per_step = int(dict(local.options).get("n_perturbations", 1) or 1)  # type: ignore[call-overload]
        most = local.epochs * math.ceil(answer.num_samples / max(local.batch_size, 1)) * max(per_step, 1)
        if len(history) > most:
            raise ValueError(f"it sent {len(history)} (seed, g) pairs; {local.epochs} epoch(s) of "
                             f"{answer.num_samples} examples in batches of {local.batch_size} make at most {most}")
        return history

    def exchange(self, messages: Sequence[Any], timeout_s: float) -> list[tuple[Any, Any, float]]:
        """The engine's transport: push ``messages``, pull replies until all arrived or ``timeout_s`` passed.

        Returns (message, reply or None, seconds from the push to the reply) in the order of ``messages``.
        """
        if not messages:
            return []
        start = time.monotonic()
        ids = list(self.grid.push_messages(messages))
        pending = {i for i in ids if i}
        replies: dict[str, tuple[Any, float]] = {}
        while pending:
            for reply in self.grid.pull_messages(sorted(pending)):
                replies[reply.metadata.reply_to_message_id] = (reply, time.monotonic() - start)
                pending.discard(reply.metadata.reply_to_message_id)
            if not pending or time.monotonic() - start >= timeout_s:
                break
            time.sleep(self.poll_s)
        return [(m, *replies.get(i, (None, 0.0))) for m, i in zip(messages, ids, strict=True)]
