import numpy as np
import pytest

from pocketlearn.federated.seeding import VECTORIZED_FROM, client_generators


@pytest.mark.parametrize(("seed", "rnd"), [(0, 0), (2, 1), (2**32 - 1, 77), (2**32, 3), (5, 2**40)])
@pytest.mark.parametrize("clients", [3, VECTORIZED_FROM, 200])
def test_each_clients_stream_is_numpys_default_rng_of_seed_round_and_client(seed, rnd, clients):
    ids = [0, 1, 2**32 - 1, *np.random.default_rng(seed % 97).integers(0, 2**32, clients - 3).tolist()]
    for c, generator in zip(ids, client_generators(seed, rnd, ids), strict=True):
        expected = np.random.default_rng([seed, rnd, c])
        assert (generator.permutation(23) == expected.permutation(23)).all()
        assert generator.random() == expected.random()  # the stream goes on alike after the permutation


def test_client_ids_beyond_one_word_fall_back_to_numpys_seeding():
    ids = [*range(20), 2**40]
    for c, generator in zip(ids, client_generators(2, 5, ids), strict=True):
        assert generator.integers(1 << 30) == np.random.default_rng([2, 5, c]).integers(1 << 30)


def test_a_numpy_that_seeds_otherwise_is_not_trusted(monkeypatch):
    import pocketlearn.federated.seeding as seeding

    monkeypatch.setattr(seeding, "_pcg_state", lambda words: {"state": 1, "inc": 1})  # a changed seeding
    seeding._agrees_with_numpy.cache_clear()
    try:
        ids = list(range(20))
        for c, generator in zip(ids, seeding.client_generators(2, 5, ids), strict=True):
            assert generator.random() == np.random.default_rng([2, 5, c]).random()
    finally:
        seeding._agrees_with_numpy.cache_clear()
