import numpy as np
import pytest
import torch

from pocketlearn.data.synthetic import CLASSES, DIM, TEST, Synthetic
from pocketlearn.errors import ConfigError


def test_a_clients_samples_come_from_the_seed_and_its_id_alone():
    source = Synthetic(0.5, 0.5, seed=3)
    x, y = source.samples(12, 40)
    assert x.shape == (40, DIM) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert bool(((y >= 0) & (y < CLASSES)).all())
    again = Synthetic(0.5, 0.5, seed=3).samples(12, 40)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, source.samples(13, 40)[0])
    assert not torch.equal(x, source.samples(12, 40, TEST)[0])  # held-out samples are fresh draws
    assert not torch.equal(x, Synthetic(0.5, 0.5, seed=4).samples(12, 40)[0])


def _input_spread(beta: float) -> float:
    means = np.stack([Synthetic(0.5, beta, seed=0).client_model(c)[2].mean() for c in range(200)])
    return float(means.std())


def test_beta_sets_how_far_the_clients_inputs_are_apart():
    assert _input_spread(0.0) < 0.2 < 1.0 < _input_spread(2.0)


def test_alpha_sets_how_far_the_clients_models_are_apart():
    def spread(alpha: float) -> float:
        return float(np.std([Synthetic(alpha, 0.5, seed=0).client_model(c)[0].mean() for c in range(200)]))

    assert spread(0.0) < 0.2 < 1.0 < spread(2.0)


def test_negative_alpha_or_beta_is_refused():
    with pytest.raises(ConfigError, match="α, β ≥ 0"):
        Synthetic(-1.0, 0.5)
