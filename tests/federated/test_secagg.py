from dataclasses import replace

import numpy as np
import pytest
import torch

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
    secure_sum,
    secure_sum_deltas,
    shamir,
)
from pocketlearn.federated.secagg.masking import pair_sign
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
    with pytest.raises(SecAggError, match="only 5 masked inputs arrived, threshold is 6"):
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
    with pytest.raises(SecAggError, match="does not hold"):
        shares[owner] = shamir.Share(99, 1)
        r.server.aggregate(responses)


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
