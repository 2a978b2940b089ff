"""The device side's wire step: how a method group's updates leave their devices and what the server reads.

One :class:`Uplink` per method, chosen once when the run is built (:func:`choose_uplink`): the codec (with
error feedback), MeZO's (seed, g) pairs, a mixed run's zeroth-order coefficients, or payloads that real
devices already encoded. In simulation a lossy codec encodes each update for real and decodes it again, so the
server aggregates exactly what a device would have sent and the byte counts are those of real payloads; the
uncompressed payload is lossless, so there only its exact size is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import Tensor

from pocketlearn.federated.codecs import Codec, ErrorFeedback, dense_size
from pocketlearn.federated.codecs.seeds import decode_history, encode_history, replay_delta
from pocketlearn.federated.round import Payloads, RoundResult, SeedHistory, SeedPairs
from pocketlearn.federated.updates import RoundUpdates
from pocketlearn.methods import available_methods, get_method_class

if TYPE_CHECKING:
    from pocketlearn.federated.mixed import Expansion


class Uplink(Protocol):
    """A method group's updates as the server decodes them, and each client's uplink bytes."""

    def send(self, result: RoundResult, rnd: int, start: dict[str, Tensor], expansion: Expansion | None
             ) -> tuple[RoundUpdates, list[int]]: ...


def uplink_stream(codec_seed: int, rnd: int, client: int) -> np.random.Generator:
    """The random stream client ``client`` encodes its round-``rnd`` update with (wherever it is encoded)."""
    return np.random.default_rng([codec_seed, rnd, client])


@dataclass
class CodecUplink:
    """Each update encoded with the run's uplink codec (error feedback kept per client), then decoded."""

    codec: Codec
    codec_seed: int
    feedback: ErrorFeedback | None = None

    def send(self, result: RoundResult, rnd: int, start: dict[str, Tensor], expansion: Expansion | None
             ) -> tuple[RoundUpdates, list[int]]:
        return result.updates, self.encode(result.updates, rnd)

    def encode(self, u: RoundUpdates, rnd: int) -> list[int]:
        """Encode each client's update for real; its row becomes what the server decodes. Returns byte counts."""
        if not self.codec.stages and not u.trained:  # lossless: what the server decodes is the update itself
            return [dense_size({n: d.shape[1:] for n, d in u.deltas.items()})] * len(u)
        sizes = []
        expected = {n: d.shape[1:] for n, d in u.deltas.items()}
        for k, c in enumerate(u.client_ids):
            delta = u.client_delta(k)
            rng = uplink_stream(self.codec_seed, rnd, c)
            if self.feedback:
                payload, sent = self.feedback.encode(self.codec, c, delta, rng)
            else:
                payload = self.codec.encode(delta, rng)
                sent = self.codec.decode(payload, expected)
            for n, t in sent.items():
                u.deltas[n][k] = t
            sizes.append(len(payload))
        return sizes


@dataclass(frozen=True)
class SeedUplink:
    """Seed exchange: each MeZO client's (seed, g) pairs travel; its row becomes the server's replay of them."""

    options: Mapping[str, Any]  # the method's options: the replay needs its learning rate, eps, pool

    def send(self, result: RoundResult, rnd: int, start: dict[str, Tensor], expansion: Expansion | None
             ) -> tuple[RoundUpdates, list[int]]:
        u, sizes = result.updates, []
        for k, history in enumerate(seed_histories(result)):
            payload = encode_history(history)
            replayed = replay_delta({n: start[n] for n in u.client_delta(k)}, decode_history(payload),
                                    dict(self.options))
            for n, t in replayed.items():
                u.deltas[n][k] = t
            sizes.append(len(payload))
        return u, sizes


@dataclass(frozen=True)
class CoefficientUplink:
    """A mixed run's zeroth-order clients: one coefficient per seed of the round's pool, then the codec."""

    codec: CodecUplink

    def send(self, result: RoundResult, rnd: int, start: dict[str, Tensor], expansion: Expansion | None
             ) -> tuple[RoundUpdates, list[int]]:
        assert expansion is not None, "ZO coefficients are a mixed run's wire form"
        u = expansion.zo_wire(result.updates, seed_histories(result))
        return u, self.codec.encode(u, rnd)


class Delivered:
    """Updates encoded on real devices and decoded by the engine: the bytes are those that crossed the network."""

    def send(self, result: RoundResult, rnd: int, start: dict[str, Tensor], expansion: Expansion | None
             ) -> tuple[RoundUpdates, list[int]]:
        assert isinstance(result.wire, Payloads), f"an engine on devices reports each payload's size, not {result.wire}"
        return result.updates, result.wire.sizes


def seed_histories(result: RoundResult) -> list[SeedHistory]:
    """The (seed, g) pairs of a group whose method sends seeds (its engine returns them as its wire form)."""
    assert isinstance(result.wire, SeedPairs), f"a client that sends seeds returns its pairs, not {result.wire}"
    return result.wire.histories


def sends_seeds(method: str) -> bool:
    """Whether ``method``'s clients can send (seed, g) pairs instead of an update (seed exchange)."""
    return method in available_methods() and get_method_class(method).sends_seeds


def choose_uplink(method: str, codec: CodecUplink, *, mixed: bool, on_devices: bool, seed_exchange: bool,
                  seed_options: Callable[[], Mapping[str, Any]]) -> Uplink:
    """``method``'s wire step in this run (decided once per method); ``seed_options`` gives the replay's options."""
    if mixed and not on_devices:
        from pocketlearn.federated.mixed import kind_of

        if kind_of(method) == "zo":
            return CoefficientUplink(codec)
    if seed_exchange and sends_seeds(method):
        return SeedUplink(seed_options())
    return Delivered() if on_devices else codec
