"""The round's steps: chosen once from the config, and the same weights whichever way clients are trained."""

import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.config import SecAggSection
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.pipeline import (
    DistributedPrivacy,
    MixedPrivacy,
    MixedSecureAggregation,
    Plain,
    SecureAggregation,
    aggregation,
    secure_plan,
)
from pocketlearn.federated.round import SecurePlan, SimulatedEngine
from pocketlearn.federated.strategies import make_strategy
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates
from tests.federated.configs import config_with

SECAGG = SecAggSection(enabled=True, clip=2.0, threshold=0.6)
DP = {"clip": 0.5, "noise_multiplier": 0.3, "seed": 7, "reproducible_noise": True}
MIXED = object()  # stands for a run's MixedMethods: the choice only asks whether there is one


def _dp_fedavg():
    return make_strategy("dp-fedavg", expected_clients=4, num_clients=20, dp=DP)


@pytest.mark.parametrize(("strategy", "secagg", "mixed", "step"), [
    ("fedavg", None, None, Plain),
    ("dp-fedavg", None, None, Plain),  # central DP: the strategy clips and noises the updates it sees
    ("fedavg", SECAGG, None, SecureAggregation),
    ("dp-fedavg", SECAGG, None, DistributedPrivacy),
    ("fedavg", None, MIXED, Plain),  # the updates arrive expanded to global deltas
    ("dp-fedavg", None, MIXED, MixedPrivacy),
    ("fedavg", SECAGG, MIXED, MixedSecureAggregation),
], ids=["plain", "central-dp", "secagg", "distributed-dp", "mixed", "mixed-dp", "mixed-secagg"])
def test_the_server_steps_follow_the_config(strategy, secagg, mixed, step):
    s = _dp_fedavg() if strategy == "dp-fedavg" else make_strategy(strategy)
    chosen = aggregation(s, SimulatedEngine(), secure_plan(secagg, s.mechanism), mixed)
    assert type(chosen) is step
    assert chosen.strategy is s  # each step wraps the run's strategy


def test_distributed_dp_in_a_mixed_run_is_refused_when_the_steps_are_chosen():
    s = _dp_fedavg()
    with pytest.raises(ConfigError, match="mixed-method run"):
        aggregation(s, SimulatedEngine(), secure_plan(SECAGG, s.mechanism), MIXED)


def test_a_simulated_engine_aggregates_securely_to_the_weighted_mean():
    torch.manual_seed(0)
    clients = [ClientUpdate(c, n, {"w": torch.randn(3, 2) * 0.1}) for c, n in [(4, 1), (7, 3), (9, 2), (11, 4)]]
    updates = RoundUpdates.stack(clients)
    weights = updates.num_samples / updates.num_samples.sum()
    expected = (updates.deltas["w"] * weights.view(-1, 1, 1)).sum(0, keepdim=True)
    out = SimulatedEngine().secure_mean(updates, SecurePlan(threshold=0.6, clip=2.0), rnd=3)  # (weights in place)
    assert out.row is not None and out.finished == 4 and out.sent > 0 and out.received > 0
    torch.testing.assert_close(out.row.deltas["w"], expected, atol=1e-5, rtol=0)


# --- one answer whichever way the clients train: together (vectorized) or one by one ------------------------------
BASE = {"name": "steps", "rounds": 2, "clients_per_round": 6, "checkpoint": False,
        "data": {"name": "digits", "partition": "iid", "num_clients": 12, "limit": 600, "test_limit": 200},
        "model": {"name": "digits-mlp"}, "devices": {"availability": False}, "client": {"lr": 0.1}}
MIXED_RUN = {"devices__mix": {"laptop-16g": 0.3, "phone-4g": 0.4, "phone-1g": 0.3},
             "client__methods": {"laptop-16g": "backprop", "phone-4g": "lora", "phone-1g": "mezo"},
             "client__per_method": {"mezo": {"lr": 0.003}, "lora": {"rank": 4}}}
DP_CENTRAL = {"name": "dp-fedavg", "options": {"dp": DP}}
# (lossy codecs are left out: float rounding of the two paths may flip a quantization level or a top-k pick;
# test_engine_parity holds them to the in-process run bit for bit on Ray)
FEATURES = {
    "plain": {},
    "dropout-deadline": {"devices__dropout": 0.3, "devices__deadline_s": 0.03,
                         "devices__mix": {"laptop-16g": 0.5, "phone-1g": 0.5}},
    "secagg": {"secagg__enabled": True, "secagg__clip": 2.0},
    "dp-central": {"strategy": DP_CENTRAL},
    "dp-secagg": {"strategy": DP_CENTRAL, "secagg__enabled": True, "secagg__clip": 2.0},
    "mixed": MIXED_RUN,
    "mixed-secagg": {**MIXED_RUN, "secagg__enabled": True, "secagg__clip": 2.0},
    "mixed-dp": {**MIXED_RUN, "strategy": DP_CENTRAL},
}
EXACT = ("sampled", "finished", "dropped", "stragglers", "bytes_up", "bytes_down", "by_method", "bytes_by_method",
         "epsilon", "dp_noise")


def _run(config):
    server, _ = build_server(config, None)
    records = server.run(config.rounds)
    return server.params, records


@pytest.mark.parametrize("feature", list(FEATURES))
def test_clients_trained_together_give_the_weights_of_clients_trained_one_by_one(feature):
    config = config_with(BASE, **FEATURES[feature])
    together_params, together = _run(config)
    alone_params, alone = _run(config.model_copy(update={"vectorize": False}))
    for a, b in zip(together, alone, strict=True):
        assert {k: getattr(a, k) for k in EXACT} == {k: getattr(b, k) for k in EXACT}
        assert a.finished > 0
    for name, p in together_params.items():
        torch.testing.assert_close(alone_params[name], p, rtol=1e-4, atol=2e-5, msg=name)
