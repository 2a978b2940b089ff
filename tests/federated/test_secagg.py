from dataclasses import replace

import numpy as np
import pytest
import torch
from cryptography.exceptions import InvalidTag

from pocketlearn.errors import ConfigError, PocketlearnError, TrainingError
from pocketlearn.federated.secagg import (
    FieldSpec,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    crypto,
    measure_cost,
    neighbour_graph,
    round_thresholds,
    secure_sum,
    secure_sum_deltas,
    shamir,
)
from pocketlearn.federated.secagg.masking import pair_sign
from pocketlearn.federated.secagg.messages import EncryptedShare, MaskedInput
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates


def _vectors(n, d=64, seed=0):
    return list(np.random.default_rng(seed).uniform(-1, 1, (n, d)))


def _plain(vectors, dropped=()):
    return sum(v for i, v in enumerate(vectors) if i not in dropped)


class Round:
    """Drive the protocol by hand so a test can step in between rounds."""

    def __init__(self, vectors, threshold, neighbours=None):
        n = len(vectors)
        self.vectors = vectors
        self.config = SecAggConfig(threshold, FieldSpec(1.0, n), vectors[0].size, neighbour_graph(n, neighbours))
        self.server = SecAggServer(self.config)
        self.clients = [SecAggClient(u, self.config) for u in range(n)]
        routed = self.server.receive_adverts([c.advertise() for c in self.clients])
        self.inbox = self.server.route_shares([c.share_keys(routed[c.id]) for c in self.clients])
        self.masked = {c.id: c.masked_input(vectors[c.id], self.inbox[c.id]) for c in self.clients}

    def finish(self, dropped=(), silent=()):
        for u, y in self.masked.items():
            if u not in dropped:
                self.server.receive_masked(y)
        self.request = self.server.unmask_request()
        self.responses = [self.clients[u].unmask_shares(self.request.survivors, self.request.dropped)
                          for u in sorted(self.request.survivors - set(silent))]
        return self.server.aggregate(self.responses)


@pytest.mark.parametrize("neighbours", [None, 4], ids=["all-pairs", "k=4"])
def test_secure_sum_is_the_plain_sum_within_quantization_error(neighbours):
    vectors = _vectors(12)
    got = secure_sum(vectors, threshold=4, clip=1.0, neighbours=neighbours, seed=3)
    assert np.abs(got - _plain(vectors)).max() <= FieldSpec(1.0, 12).max_error(12)
    assert np.abs(got - _plain(vectors)).max() > 0  # it really went through fixed point


def test_secure_sum_takes_tensors_keeps_their_shape_and_clips():
    tensors = [torch.full((3, 4), 0.25 * i) for i in range(5)]  # 1.0 is on the clip bound
    got = secure_sum(tensors, threshold=3, clip=0.5, seed=0)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, np.full((3, 4), 0 + 0.25 + 0.5 + 0.5 + 0.5), atol=1e-6)


def test_sixty_four_bit_field_is_finer():
    vectors = _vectors(6)
    err32 = np.abs(secure_sum(vectors, threshold=3, clip=1.0) - _plain(vectors)).max()
    err64 = np.abs(secure_sum(vectors, threshold=3, clip=1.0, bits=64) - _plain(vectors)).max()
    assert err64 < err32 / 1000


def test_a_masked_input_alone_looks_uniform_and_uncorrelated_with_the_update():
    vectors = [np.full(4000, 0.5)] + _vectors(7, 4000)
    r = Round(vectors, threshold=5)
    y = r.masked[0].vector
    field = r.config.field
    near_zero = (y.astype(np.int64) <= field.levels) | (y.astype(np.int64) >= 2**32 - field.levels)
    assert near_zero.mean() < 0.5  # a quantized update lives in that band; uniform words fall in it w.p. 2/n
    assert abs(y.mean() / 2**32 - 0.5) < 0.02
    x, seen = vectors[1], field.dequantize(r.masked[1].vector, 1)
    assert abs(np.corrcoef(x, seen)[0, 1]) < 0.1
    assert np.abs(seen - x).mean() > 2  # uniform over the sum's range [-8, 8], far from x in [-1, 1]


def test_the_server_only_ever_holds_the_masked_sum():
    vectors = _vectors(6)
    r = Round(vectors, threshold=4)
    raw = [r.config.field.quantize(v) for v in vectors]
    r.finish()
    arrays = [v for v in vars(r.server).values() if isinstance(v, np.ndarray)]
    assert len(arrays) == 1  # the running sum of masked inputs, nothing per client
    assert not any(np.array_equal(a, q) for a in arrays for q in raw)
    assert not any(name.startswith(("masked_input", "inputs", "updates")) for name in dir(r.server))


def test_recovery_works_up_to_the_threshold_and_fails_loudly_past_it():
    vectors = _vectors(10)
    got = secure_sum(vectors, threshold=6, clip=1.0, drop_after_masking={1, 4, 7, 9})
    assert np.abs(got - _plain(vectors, {1, 4, 7, 9})).max() < 1e-5
    with pytest.raises(SecAggError, match="only 5 masked inputs arrived, 6 are needed"):
        secure_sum(vectors, threshold=6, clip=1.0, drop_after_masking={1, 4, 7, 8, 9})


def test_survivors_that_go_silent_in_the_last_round_count_against_the_threshold():
    vectors = _vectors(10)
    got = secure_sum(vectors, threshold=6, clip=1.0, drop_after_masking={0, 1}, drop_before_unmasking={2, 3})
    assert np.abs(got - _plain(vectors, {0, 1})).max() < 1e-5  # silent clients' inputs are in the sum
    with pytest.raises(SecAggError, match="5 of its 10 share holders answered, threshold is 6") as err:
        secure_sum(vectors, threshold=6, clip=1.0, drop_after_masking={0, 1}, drop_before_unmasking={2, 3, 4})
    assert isinstance(err.value, PocketlearnError)


def test_sparse_graph_threshold_is_per_neighbourhood():
    n, k = 20, 4
    graph = neighbour_graph(n, k, seed=1)
    assert all(len(g) == k for g in graph) and all(u in graph[v] for u in range(n) for v in graph[u])
    vectors = _vectors(n)
    first, second, *_ = sorted(graph[0])
    far = next(u for u in range(n) if u not in graph[0] | graph[first] | {0, first})  # holds none of 0's shares
    dropped = {0, first, far}
    got = secure_sum(vectors, threshold=3, clip=1.0, neighbours=k, seed=1, drop_after_masking=dropped)
    assert np.abs(got - _plain(vectors, dropped)).max() < 1e-5  # 3 of client 0's 5 holders are left
    with pytest.raises(SecAggError, match="2 of its 5 share holders answered, threshold is 3"):
        secure_sum(vectors, threshold=3, clip=1.0, neighbours=k, seed=1, drop_after_masking={0, first},
                   drop_before_unmasking={second})


def test_a_late_client_stays_hidden_behind_its_self_mask():
    vectors = _vectors(8, 2000)
    r = Round(vectors, threshold=5)
    r.finish(dropped={3})
    with pytest.raises(SecAggError, match="arrived after unmasking began"):
        r.server.receive_masked(r.masked[3])
    # even stripped of every pairwise mask (the server rebuilt client 3's key), y_3 keeps PRG(b_3)
    late, client = r.masked[3].vector.copy(), r.clients[3]
    for v in r.config.graph[3]:
        seed = crypto.agree(client._mask_keys.private, client._peers[v].mask_public, b"pairwise-mask")
        stream = crypto.expand(seed, late.size, late.dtype)
        late = late - stream if pair_sign(3, v) > 0 else late + stream
    assert not np.array_equal(late, r.config.field.quantize(vectors[3]))
    assert np.abs(r.config.field.dequantize(late, 1) - vectors[3]).mean() > 2
    assert 3 in r.request.dropped and all(3 not in resp.self_mask_shares for resp in r.responses)


def test_a_corrupted_encrypted_share_is_caught_by_aes_gcm():
    r = Round(_vectors(5), threshold=3)
    e = r.inbox[2][0]
    flipped = bytes([e.blob[20] ^ 1])
    r.clients[2]._inbox[e.sender] = replace(e, blob=e.blob[:20] + flipped + e.blob[21:])
    for y in r.masked.values():
        r.server.receive_masked(y)
    req = r.server.unmask_request()
    with pytest.raises(SecAggError, match=f"share from client {e.sender} fails AES-GCM authentication"):
        r.clients[2].unmask_shares(req.survivors, req.dropped)


@pytest.mark.parametrize("kind", ["self_mask_shares", "key_shares"])
def test_a_wrong_share_in_the_unmasking_round_is_caught(kind):
    r = Round(_vectors(6), threshold=4)
    for u, y in r.masked.items():
        if u != 5:
            r.server.receive_masked(y)
    req = r.server.unmask_request()
    responses = [r.clients[u].unmask_shares(req.survivors, req.dropped) for u in sorted(req.survivors)]
    owner = 0 if kind == "self_mask_shares" else 5
    shares = getattr(responses[1], kind)
    shares[owner] = shamir.Share(shares[owner].x, shares[owner].y + 1)  # a small, deliberate shift
    with pytest.raises(SecAggError, match="corrupted"):
        r.server.aggregate(responses)
    shares[owner] = shamir.Share(99, 1)  # a share its sender cannot hold: that response is left out, as if silent
    got = r.server.aggregate(responses)
    assert "does not hold" in r.server.rejected[responses[1].client]
    assert np.abs(got - _plain(r.vectors, {5})).max() < 1e-5


def test_a_client_never_reveals_both_secrets_of_one_peer():
    r = Round(_vectors(5), threshold=3)
    with pytest.raises(SecAggError, match="both as survivors and as dropped"):
        r.clients[0].unmask_shares({0, 1, 2}, {2})
    r.clients[0].unmask_shares({0, 1, 2}, {3, 4})
    with pytest.raises(SecAggError, match="answers once"):
        r.clients[0].unmask_shares({0, 1, 2, 3}, {4})


def test_shamir_any_t_shares_reconstruct_and_fewer_do_not():
    secret = crypto.random_seed()
    shares = shamir.split(secret, list(range(1, 8)), 4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pick = [shares[i] for i in rng.choice(7, 4, replace=False)]
        assert shamir.combine(pick, 4) == secret
    with pytest.raises(SecAggError, match="3 shares cannot reconstruct"):
        shamir.combine(shares[:3], 4)
    stranger = shamir.split(crypto.random_seed(), list(range(1, 8)), 4)[1]  # a share of another secret
    with pytest.raises(SecAggError, match="do not reconstruct a 32-byte secret"):
        shamir.combine([shares[0], stranger, *shares[2:4]], 4)
    # a small shift of one share moves the secret by a small multiple (Lagrange weights at 1..4 are
    # integers), which still fits in 32 bytes: the protocol's commitments catch that case
    assert shamir.combine([shares[0], shamir.Share(2, shares[1].y + 1), *shares[2:4]], 4) != secret


def test_bad_settings_are_refused_with_the_value_and_the_way_out():
    with pytest.raises(ConfigError, match="even number ≥ 2 .* got 5; try 6"):
        neighbour_graph(20, 5)
    with pytest.raises(ConfigError, match="between 1 and 5 .* got 6"):
        secure_sum(_vectors(20), threshold=6, clip=1.0, neighbours=4)
    with pytest.raises(ConfigError, match="`clip` should be a positive finite value, got -1.*`bits`"):
        FieldSpec(-1.0, 10, bits=16)
    with pytest.raises(TrainingError, match="NaN"):
        FieldSpec(1.0, 2).quantize(np.array([0.0, np.nan]))
    with pytest.raises(ConfigError, match="sized for max_clients=2"):
        FieldSpec(1.0, 2).dequantize(np.zeros(3, np.uint32), 3)


def test_bytes_are_counted_from_the_serialized_messages():
    n, d = 10, 1000
    cost = measure_cost(n, d)
    advert = 4 + 32 + 32
    key_shares = 8 + 32 + (n - 1) * (8 + 12 + 8 + 2 * shamir.SHARE_BYTES + 16)
    masked = 4 + 4 * d
    unmask = 12 + n * (4 + shamir.SHARE_BYTES)
    assert cost.sent_bytes == advert + key_shares + masked + unmask
    assert cost.received_bytes == (n - 1) * advert + (n - 1) * (8 + 12 + 8 + 2 * shamir.SHARE_BYTES + 16) + 8 + 4 * n
    assert cost.extra_sent_bytes == cost.sent_bytes - 4 * d


def test_a_sparse_graph_keeps_per_client_bytes_flat_as_clients_grow():
    small, large = measure_cost(20, 100, neighbours=6), measure_cost(200, 100, neighbours=6)
    assert large.sent_bytes == pytest.approx(small.sent_bytes, rel=0.05)
    assert measure_cost(60, 100).sent_bytes > 5 * large.sent_bytes  # all pairs grows with n


@pytest.mark.parametrize("neighbours", [None, 10], ids=["all-pairs", "k=10"])
def test_a_hundred_clients_with_dropouts_sum_correctly(neighbours):
    # its time per client is a figure of benchmarks/privacy.py, not an assertion here
    vectors = _vectors(100, 1000)
    got = secure_sum(vectors, threshold=40 if neighbours is None else 6, clip=1.0, neighbours=neighbours,
                     drop_after_masking=set(range(0, 100, 10)))
    assert np.abs(got - _plain(vectors, set(range(0, 100, 10)))).max() < 1e-4


def test_secure_sum_of_round_updates_matches_the_stacked_sum():
    updates = RoundUpdates.stack([
        ClientUpdate(i, 10, {"w": torch.randn(3, 2) * 0.1, **({"b": torch.randn(2) * 0.1} if i % 2 else {})})
        for i in range(6)])
    got = secure_sum_deltas(updates, threshold=4, clip=1.0, drop_after_masking={5})
    assert set(got) == {"w", "b"} and got["w"].shape == (3, 2) and got["b"].shape == (2,)
    for name, d in updates.deltas.items():
        torch.testing.assert_close(got[name], d[:5].sum(0), atol=1e-6, rtol=0)


def test_a_run_with_secure_aggregation_ends_near_the_plain_run(tmp_path):
    from pocketlearn.errors import ConfigError
    from pocketlearn.federated.config import parse_config
    from pocketlearn.federated.experiment import build_server

    raw = {"rounds": 3, "clients_per_round": 8, "data": {"name": "digits", "partition": "iid", "num_clients": 24}}
    finals, up = [], []
    for secagg in (False, True):
        server, _ = build_server(parse_config({**raw, "secagg": {"enabled": secagg, "clip": 1.0}}), None)
        records = server.run(3)
        assert all(r.finished == 8 for r in records)
        finals.append({n: p.detach().clone() for n, p in server.params.items()})
        up.append(sum(r.bytes_up for r in records))
    assert up[0] < up[1] < 2 * up[0]  # masked field elements + keys and shares: more than plain float32
    for name, p in finals[0].items():  # only fixed-point rounding separates them
        torch.testing.assert_close(finals[1][name], p, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="needs each client's update"):
        build_server(parse_config({**raw, "secagg": {"enabled": True}, "strategy": {"name": "median"}}), None)


# --- every message is checked at the API: a bad one is a SecAggError, and the server treats its client as dropped
def _setup(n=5, threshold=3, d=16):
    vectors = _vectors(n, d)
    config = SecAggConfig(threshold, FieldSpec(1.0, n), d, neighbour_graph(n))
    return vectors, config, SecAggServer(config), [SecAggClient(u, config) for u in range(n)]


def _masked_round(vectors, server, clients, routed, shares, dropped=()):
    """From key shares on: route them, mask, unmask; the sum the server gets."""
    inbox = server.route_shares(shares)
    for u in inbox:
        if u not in dropped:
            server.receive_masked(clients[u].masked_input(vectors[u], inbox[u]))
    request = server.unmask_request()
    return server.aggregate(clients[u].unmask_shares(request.survivors, request.dropped)
                            for u in sorted(request.survivors))


@pytest.mark.parametrize("bad", ["short", "long", "uint16", "int32", "float", "2-d", "list"])
def test_a_masked_input_of_the_wrong_length_or_dtype_is_refused_and_its_client_counts_as_dropped(bad):
    vectors, config, server, clients = _setup()
    routed = server.receive_adverts([c.advertise() for c in clients])
    inbox = server.route_shares([c.share_keys(routed[c.id]) for c in clients])
    masked = {c.id: c.masked_input(vectors[c.id], inbox[c.id]) for c in clients}
    y = masked[2].vector
    forged = {"short": y[:-1], "long": np.append(y, y[:1]), "uint16": y.astype(np.uint16),
              "int32": y.view(np.int32), "float": y.astype(np.float64), "2-d": y.reshape(2, -1),
              "list": y.tolist()}[bad]
    with pytest.raises(SecAggError, match="client 2's masked input is .* the round's is uint32 \\(16,\\)"):
        server.receive_masked(MaskedInput(2, forged))
    for u, m in masked.items():
        if u != 2:
            server.receive_masked(m)
    request = server.unmask_request()
    assert request.dropped == {2}
    got = server.aggregate(clients[u].unmask_shares(request.survivors, request.dropped)
                           for u in sorted(request.survivors))
    assert np.abs(got - _plain(vectors, {2})).max() < 1e-5


def test_masked_inputs_from_unknown_clients_out_of_order_or_twice_are_refused():
    vectors, config, server, clients = _setup()
    y = MaskedInput(0, np.zeros(16, np.uint32))
    with pytest.raises(SecAggError, match="before the keys were shared"):
        server.receive_masked(y)
    routed = server.receive_adverts([c.advertise() for c in clients])
    inbox = server.route_shares([c.share_keys(routed[c.id]) for c in clients])
    for u in (7, -1, True, 1.0):
        with pytest.raises(SecAggError, match="round's clients are 0..4"):
            server.receive_masked(MaskedInput(u, np.zeros(16, np.uint32)))
    server.receive_masked(clients[0].masked_input(vectors[0], inbox[0]))
    with pytest.raises(SecAggError, match="second masked input; the first one stands"):
        server.receive_masked(MaskedInput(0, np.zeros(16, np.uint32)))
    with pytest.raises(SecAggError, match="expected a MaskedInput, got dict"):
        server.receive_masked({"client": 1})


def test_shares_to_a_client_that_never_advertised_leave_their_sender_out_of_the_round():
    vectors, config, server, clients = _setup()
    routed = server.receive_adverts([c.advertise() for c in clients[:4]])  # client 4 never advertised
    shares = [c.share_keys(routed[c.id]) for c in clients[:4]]
    stray = EncryptedShare(0, 4, shares[0].shares[0].blob)
    shares[0] = replace(shares[0], shares=(*shares[0].shares, stray))
    got = _masked_round(vectors, server, clients, routed, shares)  # (a KeyError before)
    assert "shares to clients that never advertised keys or are not its neighbours ([4])" in server.rejected[0]
    assert np.abs(got - _plain(vectors, {0, 4})).max() < 1e-5


@pytest.mark.parametrize("bad", ["short-blob", "empty-blob", "twice-to-one", "missing-one", "other-sender",
                                 "short-commitment", "sent-twice", "never-advertised", "not-a-message"])
def test_malformed_key_shares_leave_their_sender_out_and_the_round_completes(bad):
    vectors, config, server, clients = _setup(n=6, threshold=3)
    routed = server.receive_adverts([c.advertise() for c in clients[:5]])
    shares = [c.share_keys(routed[c.id]) for c in clients[:5]]
    m = shares[1]
    first = m.shares[0]
    forged = {"short-blob": replace(m, shares=(replace(first, blob=first.blob[:20]), *m.shares[1:])),
              "empty-blob": replace(m, shares=(replace(first, blob=b""), *m.shares[1:])),
              "twice-to-one": replace(m, shares=(first, first, *m.shares[2:])),
              "missing-one": replace(m, shares=m.shares[1:]),
              "other-sender": replace(m, shares=(replace(first, sender=2), *m.shares[1:])),
              "short-commitment": replace(m, commitment=m.commitment[:31]),
              "sent-twice": m, "never-advertised": replace(m, client=5), "not-a-message": "key shares"}[bad]
    shares = shares + [forged] if bad in ("sent-twice", "never-advertised", "not-a-message") else \
        [forged if s is m else s for s in shares]
    got = _masked_round(vectors, server, clients, routed, shares)
    out = {5} | ({1} if bad not in ("never-advertised", "not-a-message") else set())
    assert np.abs(got - _plain(vectors, out)).max() < 1e-5
    assert set(server.rejected) == ({-1} if bad == "not-a-message" else {5} if bad == "never-advertised" else {1})


@pytest.mark.parametrize("bad", ["duplicate-id", "unknown-id", "short-key", "same-key-twice", "replayed-key"])
def test_bad_key_adverts_leave_their_clients_out_of_the_round(bad):
    vectors, config, server, clients = _setup(n=6, threshold=3)
    adverts = [c.advertise() for c in clients]
    a = adverts[3]
    forged = {"duplicate-id": [*adverts, SecAggClient(3, config).advertise()],
              "unknown-id": [*adverts, replace(a, client=9)],
              "short-key": [*adverts[:3], replace(a, mask_public=a.mask_public[:31]), *adverts[4:]],
              "same-key-twice": [*adverts[:3], replace(a, mask_public=a.cipher_public), *adverts[4:]],
              "replayed-key": [*adverts[:3], replace(a, mask_public=adverts[4].mask_public), *adverts[4:]]}[bad]
    routed = server.receive_adverts(forged)  # (before, the last advert of an id won, and id 9 was routed)
    out = {"unknown-id": set(), "replayed-key": {3, 4}}.get(bad, {3})
    assert set(routed) == set(range(6)) - out and all(set(r) <= set(routed) for r in routed.values())
    assert set(server.rejected) == ({9} if bad == "unknown-id" else out)
    got = _masked_round(vectors, server, clients, routed, [clients[u].share_keys(routed[u]) for u in routed])
    assert np.abs(got - _plain(vectors, out)).max() < 1e-5


def test_unusable_unmasking_responses_count_as_silent_and_the_sum_survives():
    vectors, config, server, clients = _setup(n=8, threshold=3)
    routed = server.receive_adverts([c.advertise() for c in clients])
    inbox = server.route_shares([c.share_keys(routed[c.id]) for c in clients])
    for u in range(7):
        server.receive_masked(clients[u].masked_input(vectors[u], inbox[u]))
    clients[7].masked_input(vectors[7], inbox[7])  # never arrives: client 7 is dropped
    request = server.unmask_request()
    responses = [clients[u].unmask_shares(request.survivors, request.dropped) for u in range(7)]
    r2, r3 = responses[2], responses[3]
    responses[2] = replace(r2, key_shares={**r2.key_shares, 3: r2.self_mask_shares[3]})  # a survivor's key share
    responses[3] = replace(r3, self_mask_shares={**r3.self_mask_shares, 0: "not a share"})
    extra = [responses[0], replace(responses[1], client=7), "garbage"]  # 0 twice; one in a dropped client's name
    got = server.aggregate([*responses, *extra])  # (before: a crash, or "two shares claim the same point")
    assert np.abs(got - _plain(vectors, {7})).max() < 1e-5  # 1, 4, 5, 6 hold enough shares
    why = server.rejected
    assert set(why) == {-1, 0, 2, 3, 7}
    assert "twice" in why[0] and "did not list as dropped" in why[2] and "got str" in why[3]
    assert "not a survivor" in why[7] and "got str" in why[-1]


def test_a_client_checks_what_it_is_handed_and_refuses_it_out_of_order():
    vectors, config, server, clients = _setup()
    c = clients[0]
    with pytest.raises(SecAggError, match="before it sent its masked input"):
        c.unmask_shares({0, 1, 2}, set())  # (an AssertionError before)
    with pytest.raises(SecAggError, match="before it shared its keys"):
        c.masked_input(vectors[0], [])
    adverts = {v: clients[v].advertise() for v in range(1, 5)}
    with pytest.raises(SecAggError, match="given client 2's keys as client 1's"):
        c.share_keys({**adverts, 1: adverts[2]})
    with pytest.raises(SecAggError, match="names client 7, but the round's clients are 0..4"):
        c.share_keys({**adverts, 7: replace(adverts[1], client=7)})
    with pytest.raises(SecAggError, match="two of the public keys it was given are equal"):
        c.share_keys({**adverts, 2: replace(adverts[2], mask_public=c.advertise().mask_public)})
    c.share_keys(adverts)
    with pytest.raises(SecAggError, match="already shared its keys"):
        c.share_keys(adverts)
    with pytest.raises(SecAggError, match="round's clients are 0..4"):
        c.unmask_shares({0, 1, 9}, set())


def test_a_share_sealed_in_another_round_or_malformed_is_refused_before_masking():
    vectors, config, server, clients = _setup()
    routed = server.receive_adverts([c.advertise() for c in clients])
    inbox = server.route_shares([c.share_keys(routed[c.id]) for c in clients])
    _, _, old_server, old_clients = _setup()  # an earlier round between the same clients
    old_routed = old_server.receive_adverts([c.advertise() for c in old_clients])
    old_inbox = old_server.route_shares([c.share_keys(old_routed[c.id]) for c in old_clients])
    replayed = [e if e.sender != 3 else next(o for o in old_inbox[0] if o.sender == 3) for e in inbox[0]]
    with pytest.raises(SecAggError, match="share from client 3 fails AES-GCM authentication"):
        clients[0].masked_input(vectors[0], replayed)  # (before: accepted, the mask then never removable)
    short = [replace(e, blob=e.blob[:27]) if e.sender == 2 else e for e in inbox[0]]
    with pytest.raises(SecAggError, match="from client 2 to client 0 is 27 bytes, a sealed share is 176"):
        clients[0].masked_input(vectors[0], short)
    with pytest.raises(SecAggError, match="two shares from client 1"):
        clients[0].masked_input(vectors[0], [*inbox[0], inbox[0][0]])
    with pytest.raises(SecAggError, match="should be from 1 to 0: misrouted"):
        clients[0].masked_input(vectors[0], [replace(inbox[0][0], receiver=2)])
    with pytest.raises(InvalidTag):
        crypto.open_sealed(bytes(32), b"\x00" * 20, b"")  # (a ValueError about the nonce before)
    clients[0].masked_input(vectors[0], inbox[0])  # the good inbox still works
    with pytest.raises(SecAggError, match="already sent its masked input"):
        clients[0].masked_input(vectors[0], inbox[0])


def test_a_share_at_point_zero_or_outside_the_field_does_not_read_back():
    for x, y in [(0, 5), (1, shamir.PRIME)]:
        raw = x.to_bytes(4, "big") + y.to_bytes(shamir.Y_BYTES, "big")
        with pytest.raises(SecAggError, match="outside the field"):
            shamir.Share.from_bytes(raw)


@pytest.mark.parametrize("clients, neighbours, expected", [
    (8, 4, (3, 5)), (16, 4, (3, 10)), (1000, 4, (3, 600)),  # SecAgg+: a share of the 5 holders, of the round
    (8, None, (5, 5)), (5, 4, (3, 3)), (3, 8, (2, 2)),  # all pairs (or a graph as wide as the round)
])
def test_the_threshold_is_a_share_of_each_neighbourhood_and_of_the_round(clients, neighbours, expected):
    assert round_thresholds(0.6, clients, neighbours) == expected


def test_the_sum_stays_masked_below_the_rounds_survivors_even_where_shares_would_do():
    vectors = _vectors(10)
    got = secure_sum(vectors, threshold=3, clip=1.0, neighbours=4, min_survivors=6, drop_after_masking={0, 5})
    assert np.abs(got - _plain(vectors, {0, 5})).max() < 1e-5
    with pytest.raises(SecAggError, match="only 5 masked inputs arrived, 6 are needed"):
        secure_sum(vectors, threshold=3, clip=1.0, neighbours=4, min_survivors=6, drop_after_masking={0, 2, 5, 7, 9})
