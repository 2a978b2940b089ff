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
from .messages import EncryptedShare, KeyAdvert, KeyShares, MaskedInput, UnmaskRequest, UnmaskResponse
from .shamir import Share

_CIPHER, _MASK = b"share-encryption", b"pairwise-mask"


@dataclass(frozen=True)
class SecAggConfig:
    """What every party agrees on before a round; clients are numbered 0..n-1.

    ``graph[u]`` are the clients u masks with; u's secrets are shared among ``holders(u)`` (u and its
    neighbours), any ``threshold`` of which recover them. ``threshold`` is also the number of colluding
    clients it takes to unmask someone, so keep it above half the holders.
    """

    threshold: int
    field: FieldSpec
    vector_size: int
    graph: tuple[frozenset[int], ...]

    def __post_init__(self) -> None:
        fewest = min(len(g) for g in self.graph) + 1
        if not 1 <= self.threshold <= fewest:
            raise ConfigError(f"`threshold` must be between 1 and {fewest} (a client and its neighbours), "
                              f"got {self.threshold}")
        if self.vector_size < 1:
            raise ConfigError(f"`vector_size` should be positive, got {self.vector_size}")

    @property
    def num_clients(self) -> int:
        return len(self.graph)

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


def _aad(sender: int, receiver: int) -> bytes:
    return b"pocketlearn-secagg" + struct.pack(">II", sender, receiver)


class SecAggClient:
    """One device's side: it keeps its keys and self-mask seed, and decides which shares to reveal."""

    def __init__(self, client_id: int, config: SecAggConfig, secrets: ClientSecrets | None = None) -> None:
        self.id = client_id
        self.config = config
        self._secrets = secrets or ClientSecrets.generate()
        self._cipher_keys, self._mask_keys = self._secrets.cipher, self._secrets.mask
        self._self_seed = self._secrets.self_seed
        self._peers: dict[int, KeyAdvert] = {}
        self._channel: dict[int, bytes] = {}  # AES-GCM key shared with each peer
        self._own: tuple[Share, Share] | None = None  # this client's own shares of (b, s_sk)
        self._inbox: dict[int, EncryptedShare] = {}
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
                           "answered": self._answered}).encode()

    @classmethod
    def restore(cls, raw: bytes, config: SecAggConfig) -> SecAggClient:
        """The client :meth:`export_state` saved, under the round's ``config``."""
        state = json.loads(raw)
        client = cls(int(state["id"]), config, ClientSecrets.from_bytes(bytes.fromhex(state["secrets"])))
        client._peers = {int(v): KeyAdvert.from_bytes(bytes.fromhex(a)) for v, a in state["peers"].items()}
        client._channel = {int(v): bytes.fromhex(k) for v, k in state["channel"].items()}
        if state["own"]:
            b, s = (Share.from_bytes(bytes.fromhex(x)) for x in state["own"])
            client._own = (b, s)
        client._inbox = {int(v): EncryptedShare.from_bytes(bytes.fromhex(e)) for v, e in state["inbox"].items()}
        client._answered = bool(state["answered"])
        return client

    def share_keys(self, adverts: Mapping[int, KeyAdvert]) -> KeyShares:
        """Split b_u and s_sk_u among the neighbours that advertised, encrypting each one's shares."""
        self._peers = {v: a for v, a in adverts.items() if v in self.config.graph[self.id]}
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
            key = crypto.agree(self._cipher_keys.private, self._peers[v].cipher_public, _CIPHER)
            self._channel[v] = key
            plain = struct.pack(">II", self.id, v) + b.to_bytes() + s.to_bytes()
            sealed.append(EncryptedShare(self.id, v, crypto.seal(key, plain, _aad(self.id, v))))
        return KeyShares(self.id, crypto.commit(self._self_seed), tuple(sealed))

    def masked_input(self, vector: np.ndarray, inbox: Sequence[EncryptedShare]) -> MaskedInput:
        """y_u, masked with every neighbour whose shares reached u (they will be in the sum or recovered)."""
        q = self.config.field.quantize(vector)
        if q.size != self.config.vector_size:
            raise ConfigError(f"client {self.id}: vector has {q.size} values, the round expects "
                              f"{self.config.vector_size}")
        for e in inbox:
            if e.receiver != self.id or e.sender not in self._peers:
                raise SecAggError(f"client {self.id} got a share from {e.sender} to {e.receiver}: misrouted")
        self._inbox = {e.sender: e for e in inbox}
        pairs = {v: crypto.agree(self._mask_keys.private, self._peers[v].mask_public, _MASK) for v in self._inbox}
        return MaskedInput(self.id, mask(q, self.id, self._self_seed, pairs))

    def unmask_shares(self, survivors: Collection[int], dropped: Collection[int]) -> UnmaskResponse:
        """Reveal shares of b_v for surviving v and of s_sk_v for dropped v; once, and never both for one v."""
        survivors, dropped = frozenset(survivors), frozenset(dropped)
        if self._answered:
            raise SecAggError(f"client {self.id} already answered the unmasking round; it answers once")
        if survivors & dropped:
            raise SecAggError(f"clients {sorted(survivors & dropped)} are listed both as survivors and as "
                              "dropped; revealing both secrets would unmask them")
        if self.id not in survivors or len(survivors) < self.config.threshold:
            raise SecAggError(f"client {self.id}: {len(survivors)} survivors (itself included: "
                              f"{self.id in survivors}), threshold {self.config.threshold}; refusing to unmask")
        self._answered = True
        assert self._own is not None
        b_out, s_out = {self.id: self._own[0]}, {}
        for v in (survivors | dropped) & self._inbox.keys():
            b, s = self._open(self._inbox[v])
            if v in survivors:
                b_out[v] = b
            else:
                s_out[v] = s
        return UnmaskResponse(self.id, b_out, s_out)

    def _open(self, e: EncryptedShare) -> tuple[Share, Share]:
        try:
            plain = crypto.open_sealed(self._channel[e.sender], e.blob, _aad(e.sender, self.id))
        except InvalidTag:
            raise SecAggError(f"client {self.id}: the share from client {e.sender} fails AES-GCM authentication "
                              "(corrupted in transit or sealed under another key); abort the round") from None
        if plain[:8] != struct.pack(">II", e.sender, self.id):
            raise SecAggError(f"client {self.id}: share from {e.sender} was sealed for another pair")
        n = shamir.SHARE_BYTES
        return Share.from_bytes(plain[8:8 + n]), Share.from_bytes(plain[8 + n:])


class SecAggServer:
    """Routes messages and sums masked inputs; it learns only the sum of the survivors' updates."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._adverts: dict[int, KeyAdvert] = {}
        self._commitments: dict[int, bytes] = {}
        self._masked_sum = np.zeros(config.vector_size, config.field.dtype)
        self._masked_from: set[int] = set()
        self._request: UnmaskRequest | None = None

    def receive_adverts(self, adverts: Iterable[KeyAdvert]) -> dict[int, dict[int, KeyAdvert]]:
        """Round 0: for each client that advertised, the adverts of its neighbours that did too."""
        self._adverts = {a.client: a for a in adverts}
        keys = [k for a in self._adverts.values() for k in (a.cipher_public, a.mask_public)]
        if len(set(keys)) != len(keys):
            raise SecAggError("two advertised public keys are equal; the round must be aborted")
        return {u: {v: self._adverts[v] for v in self.config.graph[u] if v in self._adverts}
                for u in self._adverts}

    def route_shares(self, messages: Iterable[KeyShares]) -> dict[int, list[EncryptedShare]]:
        """Round 1: each client's inbox of encrypted shares; senders form U2, the clients others mask with."""
        inbox: dict[int, list[EncryptedShare]] = {u: [] for u in self._adverts}
        for m in messages:
            self._commitments[m.client] = m.commitment
            for e in m.shares:
                inbox[e.receiver].append(e)
        return {u: [e for e in box if e.sender in self._commitments] for u, box in inbox.items()
                if u in self._commitments}

    def receive_masked(self, message: MaskedInput) -> None:
        """Round 2: add y_u to the running sum and keep nothing else of it."""
        u = message.client
        if self._request is not None:
            raise SecAggError(f"client {u}'s masked input arrived after unmasking began; it stays excluded "
                              "(and hidden by its self-mask)")
        if u not in self._commitments or u in self._masked_from:
            raise SecAggError(f"client {u} sent a masked input without sharing keys, or twice")
        self._masked_sum += message.vector
        self._masked_from.add(u)

    def unmask_request(self) -> UnmaskRequest:
        """Round 3 opens: survivors sent masked inputs; the dropped shared keys but did not."""
        if len(self._masked_from) < self.config.threshold:
            raise SecAggError(f"only {len(self._masked_from)} masked inputs arrived, threshold is "
                              f"{self.config.threshold}; the round cannot be unmasked")
        survivors = frozenset(self._masked_from)
        self._request = UnmaskRequest(survivors, frozenset(self._commitments) - survivors)
        return self._request

    def aggregate(self, responses: Iterable[UnmaskResponse]) -> np.ndarray:
        """Round 3 closes: the float sum of the survivors' vectors, (D,)."""
        if self._request is None:
            raise SecAggError("aggregate() before unmask_request()")
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
        assert self._request is not None
        b_shares: dict[int, list[Share]] = {}
        s_shares: dict[int, list[Share]] = {}
        for r in responses:
            if r.client not in self._request.survivors:
                raise SecAggError(f"unmasking response from client {r.client}, which is not a survivor")
            for owner, share in [*r.self_mask_shares.items(), *r.key_shares.items()]:
                if share.x != r.client + 1 or r.client not in self.config.holders(owner):
                    raise SecAggError(f"client {r.client} returned a share of client {owner}'s secret at point "
                                      f"{share.x}, which it does not hold")
            for owner, share in r.self_mask_shares.items():
                b_shares.setdefault(owner, []).append(share)
            for owner, share in r.key_shares.items():
                s_shares.setdefault(owner, []).append(share)
        return b_shares, s_shares

    def _check_enough(self, owner: int, what: str, got: int) -> None:
        t, holders = self.config.threshold, len(self.config.holders(owner))
        if got < t:
            raise SecAggError(f"cannot remove client {owner}'s {what}: {got} of its {holders} share holders "
                              f"answered, threshold is {t}; at most {holders - t} may drop out — lower the "
                              "threshold or sample more clients")

    def _recover_self_seed(self, u: int, shares: list[Share]) -> bytes:
        self._check_enough(u, "self-mask", len(shares))
        seed = shamir.combine(shares, self.config.threshold)
        if crypto.commit(seed) != self._commitments[u]:
            raise SecAggError(f"the shares of client {u}'s self-mask reconstruct a seed that does not match "
                              "its commitment: a share is wrong or corrupted")
        return seed

    def _recover_mask_key(self, v: int, shares: list[Share]) -> crypto.KeyPair:
        self._check_enough(v, "pairwise masks", len(shares))
        key = crypto.KeyPair.from_private_bytes(shamir.combine(shares, self.config.threshold))
        if key.public != self._adverts[v].mask_public:
            raise SecAggError(f"the shares of dropped client {v}'s mask key reconstruct a key that does not "
                              "match its advertised public key: a share is wrong or corrupted")
        return key
