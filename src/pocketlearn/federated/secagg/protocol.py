"""The four rounds of secure aggregation (Bonawitz et al. 2017, Fig. 4, honest-but-curious server).

0 advertise keys → 1 share keys (t-of-n shares of b_u and s_sk_u, AES-GCM-encrypted per neighbour)
→ 2 masked input y_u → 3 unmasking (survivors reveal shares of b for survivors, of s_sk for the dropped).
The server only ever holds the running sum of masked inputs, so no individual update passes through it
unmasked. Signatures and the consistency round of the actively-secure variant are not simulated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag

from pocketlearn.errors import ConfigError

from . import crypto, shamir
from .errors import SecAggError
from .field import FieldSpec
from .masking import mask, unmask
from .messages import (
    SEALED_SHARE_BYTES,
    EncryptedShare,
    KeyAdvert,
    KeyShares,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from .shamir import Share

_CIPHER, _MASK = b"share-encryption", b"pairwise-mask"


@dataclass(frozen=True)
class SecAggConfig:
    """What every party agrees on before a round; clients are numbered 0..n-1.

    ``graph[u]`` are the clients u masks with; u's secrets are shared among ``holders(u)`` (u and its
    neighbours), any ``threshold`` of which recover them. ``threshold`` is also the number of colluding
    clients it takes to unmask someone, so keep it above half the holders. The sum is unmasked only if at least
    ``survivors_needed`` clients sent masked inputs (``min_survivors``, and never fewer than ``threshold``).
    """

    threshold: int
    field: FieldSpec
    vector_size: int
    graph: tuple[frozenset[int], ...]
    min_survivors: int = 0

    def __post_init__(self) -> None:
        fewest = min(len(g) for g in self.graph) + 1
        if not 1 <= self.threshold <= fewest:
            raise ConfigError(f"`threshold` must be between 1 and {fewest} (a client and its neighbours), "
                              f"got {self.threshold}")
        if not 0 <= self.min_survivors <= self.num_clients:
            raise ConfigError(f"`min_survivors` must be between 0 and the {self.num_clients} clients, "
                              f"got {self.min_survivors}")
        if self.vector_size < 1:
            raise ConfigError(f"`vector_size` should be positive, got {self.vector_size}")

    @property
    def num_clients(self) -> int:
        return len(self.graph)

    @property
    def survivors_needed(self) -> int:
        return max(self.threshold, self.min_survivors)

    def holders(self, u: int) -> frozenset[int]:
        return self.graph[u] | {u}


@dataclass(frozen=True)
class ClientSecrets:
    """A client's secrets for one round: two X25519 key pairs and the self-mask seed.

    They are made before the client is told who else takes part or which number it has in the round; a deployed
    device keeps them in its own state between the protocol's messages.
    """

    cipher: crypto.KeyPair
    mask: crypto.KeyPair
    self_seed: bytes

    @classmethod
    def generate(cls) -> ClientSecrets:
        return cls(crypto.KeyPair.generate(), crypto.KeyPair.generate(), crypto.random_seed())

    def advert(self, client: int) -> KeyAdvert:
        return KeyAdvert(client, self.cipher.public, self.mask.public)

    def to_bytes(self) -> bytes:
        return self.cipher.private_bytes() + self.mask.private_bytes() + self.self_seed

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClientSecrets:
        n = crypto.SEED_BYTES
        if len(raw) != 3 * n:
            raise SecAggError(f"stored secure-aggregation secrets are {3 * n} bytes, got {len(raw)}")
        return cls(crypto.KeyPair.from_private_bytes(raw[:n]), crypto.KeyPair.from_private_bytes(raw[n:2 * n]),
                   raw[2 * n:])


def _client_id(u: object, config: SecAggConfig, what: str) -> int:
    """``u`` if it numbers a client of the round (0..n-1), else a SecAggError naming ``what`` carried it."""
    if not isinstance(u, int | np.integer) or isinstance(u, bool) or not 0 <= u < config.num_clients:
        raise SecAggError(f"{what} names client {u!r}, but the round's clients are 0..{config.num_clients - 1}")
    return int(u)


def _expect(message: object, kind: type, what: str) -> None:
    if not isinstance(message, kind):
        raise SecAggError(f"{what}: expected a {kind.__name__}, got {type(message).__name__}")


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != crypto.SEED_BYTES:
        size = len(key) if isinstance(key, bytes) else type(key).__name__
        raise SecAggError(f"{what} is not a {crypto.SEED_BYTES}-byte X25519 public key (got {size})")


def check_advert(advert: object, config: SecAggConfig) -> KeyAdvert:
    """A key advert that names a client of the round and carries two distinct 32-byte public keys."""
    _expect(advert, KeyAdvert, "a key advert")
    assert isinstance(advert, KeyAdvert)
    u = _client_id(advert.client, config, "a key advert")
    _check_key(advert.cipher_public, f"client {u}'s encryption key")
    _check_key(advert.mask_public, f"client {u}'s masking key")
    if advert.cipher_public == advert.mask_public:
        raise SecAggError(f"client {u} advertised one key for both purposes; each round needs two fresh key pairs")
    return advert


def check_share(e: object, config: SecAggConfig, sender: int | None = None, receiver: int | None = None
                ) -> EncryptedShare:
    """An encrypted share between two clients of the round, of the sealed size, from/to whom it should be."""
    _expect(e, EncryptedShare, "an encrypted share")
    assert isinstance(e, EncryptedShare)
    u, v = _client_id(e.sender, config, "an encrypted share"), _client_id(e.receiver, config, "an encrypted share")
    if sender is not None and u != sender or receiver is not None and v != receiver:
        raise SecAggError(f"an encrypted share from client {u} to client {v} should be from "
                          f"{sender if sender is not None else u} to {receiver if receiver is not None else v}: "
                          "misrouted or sent in another client's name")
    if not isinstance(e.blob, bytes) or len(e.blob) != SEALED_SHARE_BYTES:
        size = len(e.blob) if isinstance(e.blob, bytes) else type(e.blob).__name__
        raise SecAggError(f"the encrypted share from client {u} to client {v} is {size} bytes, a sealed share is "
                          f"{SEALED_SHARE_BYTES}: truncated or padded")
    return e


def _aad(sender: int, receiver: int) -> bytes:
    return b"pocketlearn-secagg" + struct.pack(">II", sender, receiver)


class SecAggClient:
    """One device's side: it keeps its keys and self-mask seed, and decides which shares to reveal.

    Every message it is handed is checked before it acts on it; anything malformed, misrouted or out of order
    is a :class:`SecAggError` and the client takes no further part (to the others it is a dropout).
    """

    def __init__(self, client_id: int, config: SecAggConfig, secrets: ClientSecrets | None = None) -> None:
        self.id = _client_id(client_id, config, "a client")
        self.config = config
        self._secrets = secrets or ClientSecrets.generate()
        self._cipher_keys, self._mask_keys = self._secrets.cipher, self._secrets.mask
        self._self_seed = self._secrets.self_seed
        self._peers: dict[int, KeyAdvert] = {}
        self._channel: dict[int, bytes] = {}  # AES-GCM key shared with each peer
        self._own: tuple[Share, Share] | None = None  # this client's own shares of (b, s_sk)
        self._inbox: dict[int, EncryptedShare] = {}
        self._masked = False
        self._answered = False

    def advertise(self) -> KeyAdvert:
        return self._secrets.advert(self.id)

    def export_state(self) -> bytes:
        """Everything this client holds between rounds of the protocol, secrets included (keep it on the device)."""
        own = [s.to_bytes().hex() for s in self._own] if self._own else None
        return json.dumps({"id": self.id, "secrets": self._secrets.to_bytes().hex(),
                           "peers": {v: a.to_bytes().hex() for v, a in self._peers.items()},
                           "channel": {v: k.hex() for v, k in self._channel.items()}, "own": own,
                           "inbox": {v: e.to_bytes().hex() for v, e in self._inbox.items()},
                           "masked": self._masked, "answered": self._answered}).encode()

    @classmethod
    def restore(cls, raw: bytes, config: SecAggConfig) -> SecAggClient:
        """The client :meth:`export_state` saved, under the round's ``config``."""
        try:
            state = json.loads(raw)
            client = cls(int(state["id"]), config, ClientSecrets.from_bytes(bytes.fromhex(state["secrets"])))
            client._peers = {int(v): KeyAdvert.from_bytes(bytes.fromhex(a)) for v, a in state["peers"].items()}
            client._channel = {int(v): bytes.fromhex(k) for v, k in state["channel"].items()}
            if state["own"]:
                b, s = (Share.from_bytes(bytes.fromhex(x)) for x in state["own"])
                client._own = (b, s)
            client._inbox = {int(v): EncryptedShare.from_bytes(bytes.fromhex(e))
                             for v, e in state["inbox"].items()}
            client._masked = bool(state.get("masked", bool(client._inbox)))
            client._answered = bool(state["answered"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SecAggError(f"the stored secure-aggregation state does not read back ({type(err).__name__}: "
                              f"{err}); this client sits the round out") from None
        return client

    def share_keys(self, adverts: Mapping[int, KeyAdvert]) -> KeyShares:
        """Split b_u and s_sk_u among the neighbours that advertised, encrypting each one's shares."""
        if self._own is not None:
            raise SecAggError(f"client {self.id} already shared its keys this round; it shares them once")
        self._peers = self._check_adverts(adverts)
        holders = sorted([*self._peers, self.id])
        if len(holders) < self.config.threshold:
            raise SecAggError(f"client {self.id}: only {len(holders)} of its share holders advertised keys, "
                              f"threshold is {self.config.threshold}; the round must be aborted")
        points = [h + 1 for h in holders]
        b_shares = shamir.split(self._self_seed, points, self.config.threshold)
        s_shares = shamir.split(self._mask_keys.private_bytes(), points, self.config.threshold)
        sealed = []
        for v, b, s in zip(holders, b_shares, s_shares, strict=True):
            if v == self.id:
                self._own = (b, s)
                continue
            key = self._agree(self._cipher_keys, self._peers[v].cipher_public, _CIPHER, v)
            self._channel[v] = key
            plain = struct.pack(">II", self.id, v) + b.to_bytes() + s.to_bytes()
            sealed.append(EncryptedShare(self.id, v, crypto.seal(key, plain, _aad(self.id, v))))
        return KeyShares(self.id, crypto.commit(self._self_seed), tuple(sealed))

    def _check_adverts(self, adverts: Mapping[int, KeyAdvert]) -> dict[int, KeyAdvert]:
        """The neighbours' adverts, each well formed, filed under its own client and with keys no one else has."""
        if not isinstance(adverts, Mapping):
            raise SecAggError(f"client {self.id}: the neighbours' keys should map client → KeyAdvert, got "
                              f"{type(adverts).__name__}")
        peers: dict[int, KeyAdvert] = {}
        for v, a in adverts.items():
            v = _client_id(v, self.config, f"client {self.id}'s list of neighbours' keys")
            check_advert(a, self.config)
            if a.client != v:
                raise SecAggError(f"client {self.id} was given client {a.client}'s keys as client {v}'s")
            if v in self.config.graph[self.id]:
                peers[v] = a
        mine = self.advertise()
        keys = [k for a in [mine, *peers.values()] for k in (a.cipher_public, a.mask_public)]
        if len(set(keys)) != len(keys):
            raise SecAggError(f"client {self.id}: two of the public keys it was given are equal (or equal its own); "
                              "a replayed key would let someone else read its shares, so it drops out")
        return peers

    def _agree(self, own: crypto.KeyPair, peer_public: bytes, purpose: bytes, v: int) -> bytes:
        try:
            return crypto.agree(own.private, peer_public, purpose)
        except ValueError as err:  # a low-order point: the shared secret would be all zeros
            raise SecAggError(f"client {self.id}: client {v}'s public key is unusable ({err})") from None

    def masked_input(self, vector: np.ndarray, inbox: Sequence[EncryptedShare]) -> MaskedInput:
        """y_u, masked with every neighbour whose shares reached u (they will be in the sum or recovered).

        Every share in the inbox is opened first: one that fails authentication would leave a mask the server
        could not remove, so the client refuses to mask at all (a dropout the protocol recovers from).
        """
        if self._own is None:
            raise SecAggError(f"client {self.id} was asked for its masked input before it shared its keys")
        if self._masked:
            raise SecAggError(f"client {self.id} already sent its masked input; it sends it once")
        q = self.config.field.quantize(vector)
        if q.size != self.config.vector_size:
            raise ConfigError(f"client {self.id}: vector has {q.size} values, the round expects "
                              f"{self.config.vector_size}")
        received: dict[int, EncryptedShare] = {}
        for e in inbox:
            check_share(e, self.config, receiver=self.id)
            if e.sender not in self._peers:
                raise SecAggError(f"client {self.id} got a share from client {e.sender}, which is not one of the "
                                  f"neighbours whose keys it was given ({sorted(self._peers)}): misrouted")
            if e.sender in received:
                raise SecAggError(f"client {self.id} got two shares from client {e.sender}; each sends one")
            self._open(e)
            received[e.sender] = e
        self._inbox = received
        pairs = {v: self._agree(self._mask_keys, self._peers[v].mask_public, _MASK, v) for v in self._inbox}
        self._masked = True
        return MaskedInput(self.id, mask(q, self.id, self._self_seed, pairs))

    def unmask_shares(self, survivors: Collection[int], dropped: Collection[int]) -> UnmaskResponse:
        """Reveal shares of b_v for surviving v and of s_sk_v for dropped v; once, and never both for one v."""
        survivors = frozenset(_client_id(v, self.config, "the unmasking request") for v in survivors)
        dropped = frozenset(_client_id(v, self.config, "the unmasking request") for v in dropped)
        if self._answered:
            raise SecAggError(f"client {self.id} already answered the unmasking round; it answers once")
        if self._own is None or not self._masked:
            raise SecAggError(f"client {self.id} was asked to unmask before it sent its masked input")
        if survivors & dropped:
            raise SecAggError(f"clients {sorted(survivors & dropped)} are listed both as survivors and as "
                              "dropped; revealing both secrets would unmask them")
        if self.id not in survivors or len(survivors) < self.config.survivors_needed:
            raise SecAggError(f"client {self.id}: {len(survivors)} survivors (itself included: "
                              f"{self.id in survivors}), {self.config.survivors_needed} needed; refusing to unmask")
        self._answered = True
        b_out, s_out = {self.id: self._own[0]}, {}
        for v in (survivors | dropped) & self._inbox.keys():
            b, s = self._open(self._inbox[v])
            if v in survivors:
                b_out[v] = b
            else:
                s_out[v] = s
        return UnmaskResponse(self.id, b_out, s_out)

    def _open(self, e: EncryptedShare) -> tuple[Share, Share]:
        channel = self._channel.get(e.sender)
        if channel is None:  # (shares are only ever opened from neighbours this client sealed shares for)
            raise SecAggError(f"client {self.id} shares no key with client {e.sender}; its share cannot be opened")
        try:
            plain = crypto.open_sealed(channel, e.blob, _aad(e.sender, self.id))
        except InvalidTag:
            raise SecAggError(f"client {self.id}: the share from client {e.sender} fails AES-GCM authentication "
                              "(corrupted in transit, sealed under another key or in another round); abort the "
                              "round") from None
        if plain[:8] != struct.pack(">II", e.sender, self.id):
            raise SecAggError(f"client {self.id}: share from {e.sender} was sealed for another pair")
        n = shamir.SHARE_BYTES
        return Share.from_bytes(plain[8:8 + n]), Share.from_bytes(plain[8 + n:])


class SecAggServer:
    """Routes messages and sums masked inputs; it learns only the sum of the survivors' updates.

    Every client message is checked before it is used. In the batch steps (adverts, key shares, unmasking
    responses) a malformed message, or one that speaks for another client or repeats one, leaves its client
    out as if it had dropped at that step; why is kept in :attr:`rejected`. :meth:`receive_masked` refuses a bad
    input with a :class:`SecAggError` and keeps nothing of it, so its client counts as dropped after sharing keys.
    The round fails only where the protocol must: too few clients left to reach the threshold.
    """

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self.rejected: dict[int, str] = {}  # client -> why its message was refused (it counts as dropped)
        self._adverts: dict[int, KeyAdvert] | None = None
        self._neighbours: dict[int, frozenset[int]] = {}  # client -> the neighbours whose adverts it was sent
        self._commitments: dict[int, bytes] | None = None
        self._masked_sum = np.zeros(config.vector_size, config.field.dtype)
        self._masked_from: set[int] = set()
        self._request: UnmaskRequest | None = None

    def _reject(self, u: int, why: str) -> None:
        self.rejected.setdefault(u, why)

    def receive_adverts(self, adverts: Iterable[KeyAdvert]) -> dict[int, dict[int, KeyAdvert]]:
        """Round 0: for each client that advertised, the adverts of its neighbours that did too."""
        if self._adverts is not None:
            raise SecAggError("receive_adverts() called twice; keys are advertised once per round")
        valid: dict[int, KeyAdvert] = {}
        for a in adverts:
            try:
                check_advert(a, self.config)
            except SecAggError as err:
                self._reject(getattr(a, "client", -1), f"unusable key advert: {err}")
                continue
            if a.client in valid or a.client in self.rejected:
                valid.pop(a.client, None)
                self._reject(a.client, f"client {a.client} advertised keys twice")
                continue
            valid[a.client] = a
        owners: dict[bytes, set[int]] = {}
        for a in valid.values():
            for k in (a.cipher_public, a.mask_public):
                owners.setdefault(k, set()).add(a.client)
        for shared in (o for o in owners.values() if len(o) > 1):
            for u in shared:
                valid.pop(u, None)
                self._reject(u, f"clients {sorted(shared)} advertised the same public key (a replay?)")
        self._adverts = valid
        routed = {u: {v: valid[v] for v in self.config.graph[u] if v in valid} for u in valid}
        self._neighbours = {u: frozenset(r) for u, r in routed.items()}
        return routed

    def route_shares(self, messages: Iterable[KeyShares]) -> dict[int, list[EncryptedShare]]:
        """Round 1: each client's inbox of encrypted shares; senders form U2, the clients others mask with.

        A client's shares are taken only if it advertised keys and sent exactly one well-formed share to each
        neighbour whose keys it was sent, and nothing else; else none of its shares travel.
        """
        if self._adverts is None:
            raise SecAggError("route_shares() before receive_adverts(): no client has advertised keys yet")
        if self._commitments is not None:
            raise SecAggError("route_shares() called twice; keys are shared once per round")
        accepted: dict[int, KeyShares] = {}
        for m in messages:
            try:
                u = self._check_key_shares(m)
            except SecAggError as err:
                self._reject(getattr(m, "client", -1), f"unusable key shares: {err}")
                continue
            if u in accepted or u in self.rejected:
                accepted.pop(u, None)
                self._reject(u, f"client {u} sent its key shares twice")
                continue
            accepted[u] = m
        self._commitments = {u: m.commitment for u, m in accepted.items()}
        inbox: dict[int, list[EncryptedShare]] = {u: [] for u in accepted}
        for m in accepted.values():
            for e in m.shares:
                if e.receiver in inbox:
                    inbox[e.receiver].append(e)
        return inbox

    def _check_key_shares(self, m: object) -> int:
        _expect(m, KeyShares, "key shares")
        assert isinstance(m, KeyShares) and self._adverts is not None
        u = _client_id(m.client, self.config, "key shares")
        if u not in self._adverts:
            raise SecAggError(f"client {u} sent key shares but never advertised keys (or its advert was refused)")
        if not isinstance(m.commitment, bytes) or len(m.commitment) != crypto.SEED_BYTES:
            raise SecAggError(f"client {u}'s commitment is not a {crypto.SEED_BYTES}-byte SHA-256 digest")
        receivers = [check_share(e, self.config, sender=u).receiver for e in m.shares]
        if len(set(receivers)) != len(receivers):
            raise SecAggError(f"client {u} sent two shares to one neighbour: {sorted(receivers)}")
        if set(receivers) != self._neighbours[u]:
            strangers = sorted(set(receivers) - self._neighbours[u])
            missing = sorted(self._neighbours[u] - set(receivers))
            raise SecAggError(f"client {u} sent shares to clients that never advertised keys or are not its "
                              f"neighbours ({strangers}) and none to neighbours that did ({missing})")
        return u

    def receive_masked(self, message: MaskedInput) -> None:
        """Round 2: add y_u to the running sum and keep nothing else of it.

        A malformed, repeated or unexpected input raises a SecAggError and leaves the sum untouched.
        """
        _expect(message, MaskedInput, "a masked input")
        u = _client_id(message.client, self.config, "a masked input")
        if self._commitments is None:
            raise SecAggError(f"client {u}'s masked input arrived before the keys were shared (route_shares())")
        if self._request is not None:
            raise SecAggError(f"client {u}'s masked input arrived after unmasking began; it stays excluded "
                              "(and hidden by its self-mask)")
        if u not in self._commitments:
            raise SecAggError(f"client {u} sent a masked input without sharing keys; it stays excluded")
        if u in self._masked_from:
            raise SecAggError(f"client {u} sent a second masked input; the first one stands")
        y, field = message.vector, self.config.field
        if not isinstance(y, np.ndarray) or y.dtype != field.dtype or y.shape != (self.config.vector_size,):
            got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
            raise SecAggError(f"client {u}'s masked input is {got}; the round's is {field.dtype} "
                              f"({self.config.vector_size},). It stays excluded")
        self._masked_sum += y
        self._masked_from.add(u)

    def unmask_request(self) -> UnmaskRequest:
        """Round 3 opens: survivors sent masked inputs; the dropped shared keys but did not."""
        if self._commitments is None:
            raise SecAggError("unmask_request() before route_shares(): no keys were shared")
        if self._request is not None:
            return self._request
        if len(self._masked_from) < self.config.survivors_needed:
            raise SecAggError(f"only {len(self._masked_from)} masked inputs arrived, {self.config.survivors_needed} "
                              "are needed; the round cannot be unmasked")
        survivors = frozenset(self._masked_from)
        self._request = UnmaskRequest(survivors, frozenset(self._commitments) - survivors)
        return self._request

    def aggregate(self, responses: Iterable[UnmaskResponse]) -> np.ndarray:
        """Round 3 closes: the float sum of the survivors' vectors, (D,).

        A response that is malformed, repeated, from a non-survivor or holding shares its sender cannot hold is
        left out (its sender counts as silent); the sum fails only if too few good responses remain.
        """
        if self._request is None:
            raise SecAggError("aggregate() before unmask_request()")
        assert self._adverts is not None and self._commitments is not None
        b_shares, s_shares = self._collect(responses)
        survivors, dropped = self._request.survivors, self._request.dropped
        self_seeds = [self._recover_self_seed(u, b_shares.get(u, [])) for u in sorted(survivors)]
        orphans = []
        for v in sorted(dropped):
            key = self._recover_mask_key(v, s_shares.get(v, []))
            for u in sorted(self.config.graph[v] & survivors):
                orphans.append((u, v, crypto.agree(key.private, self._adverts[u].mask_public, _MASK)))
        total = unmask(self._masked_sum, self_seeds, orphans)
        return self.config.field.dequantize(total, len(survivors))

    def _collect(self, responses: Iterable[UnmaskResponse]) -> tuple[dict[int, list[Share]], dict[int, list[Share]]]:
        accepted: dict[int, UnmaskResponse] = {}
        for r in responses:
            try:
                u = self._check_response(r)
            except SecAggError as err:
                self._reject(getattr(r, "client", -1), f"unusable unmasking response: {err}")
                continue
            if u in accepted or u in self.rejected:
                accepted.pop(u, None)
                self._reject(u, f"client {u} answered the unmasking round twice")
                continue
            accepted[u] = r
        b_shares: dict[int, list[Share]] = {}
        s_shares: dict[int, list[Share]] = {}
        for r in accepted.values():
            for owner, share in r.self_mask_shares.items():
                b_shares.setdefault(owner, []).append(share)
            for owner, share in r.key_shares.items():
                s_shares.setdefault(owner, []).append(share)
        return b_shares, s_shares

    def _check_response(self, r: object) -> int:
        _expect(r, UnmaskResponse, "an unmasking response")
        assert isinstance(r, UnmaskResponse) and self._request is not None
        u = _client_id(r.client, self.config, "an unmasking response")
        if u not in self._request.survivors:
            raise SecAggError(f"unmasking response from client {u}, which is not a survivor")
        for table, owners, what in [(r.self_mask_shares, self._request.survivors, "self-mask"),
                                    (r.key_shares, self._request.dropped, "mask-key")]:
            if not isinstance(table, Mapping):
                raise SecAggError(f"client {u}'s {what} shares should map client → Share, got {type(table).__name__}")
            for owner, share in table.items():
                owner = _client_id(owner, self.config, f"client {u}'s {what} shares")
                if owner not in owners:
                    raise SecAggError(f"client {u} returned a {what} share of client {owner}, which the request "
                                      f"did not list as {'a survivor' if what == 'self-mask' else 'dropped'}")
                _expect(share, Share, f"client {u}'s share of client {owner}")
                share.check()
                if share.x != u + 1 or u not in self.config.holders(owner):
                    raise SecAggError(f"client {u} returned a share of client {owner}'s secret at point "
                                      f"{share.x}, which it does not hold")
        return u

    def _check_enough(self, owner: int, what: str, got: int) -> None:
        t, holders = self.config.threshold, len(self.config.holders(owner))
        if got < t:
            raise SecAggError(f"cannot remove client {owner}'s {what}: {got} of its {holders} share holders "
                              f"answered, threshold is {t}; at most {holders - t} may drop out — lower the "
                              "threshold or sample more clients")

    def _recover_self_seed(self, u: int, shares: list[Share]) -> bytes:
        assert self._commitments is not None
        self._check_enough(u, "self-mask", len(shares))
        seed = shamir.combine(shares, self.config.threshold)
        if crypto.commit(seed) != self._commitments[u]:
            raise SecAggError(f"the shares of client {u}'s self-mask reconstruct a seed that does not match "
                              "its commitment: a share is wrong or corrupted")
        return seed

    def _recover_mask_key(self, v: int, shares: list[Share]) -> crypto.KeyPair:
        assert self._adverts is not None
        self._check_enough(v, "pairwise masks", len(shares))
        key = crypto.KeyPair.from_private_bytes(shamir.combine(shares, self.config.threshold))
        if key.public != self._adverts[v].mask_public:
            raise SecAggError(f"the shares of dropped client {v}'s mask key reconstruct a key that does not "
                              "match its advertised public key: a share is wrong or corrupted")
        return key
