import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from pocketlearn.federated.attacks import Attack, alie_z
from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.updates import RoundUpdates


def _accuracy(strategy: dict, attack: dict | None) -> float:
    raw = {"rounds": 10, "clients_per_round": 20, "client": {"lr": 0.1},
           "data": {"name": "digits", "partition": "iid", "num_clients": 50},
           "strategy": strategy, **({"attack": attack} if attack else {})}
    server, _ = build_server(parse_config(raw), None)
    return server.run(10)[-1].eval["accuracy"]


ATTACK = {"fraction": 0.2, "kind": "sign-flip", "scale": 10.0}


@pytest.fixture(scope="module")
def fedavg():
    return {"clean": _accuracy({"name": "fedavg"}, None), "attacked": _accuracy({"name": "fedavg"}, ATTACK)}


def test_sign_flipping_clients_break_fedavg(fedavg):
    assert fedavg["clean"] > 0.7 and fedavg["attacked"] < 0.2


@pytest.mark.parametrize("strategy,floor", [
    ({"name": "median"}, -0.1),
    ({"name": "trimmed-mean", "options": {"trim_fraction": 0.3}}, -0.1),
    ({"name": "norm-bounding", "options": {"max_norm": 0.3}}, -0.25),  # bounds each push; flips still subtract
], ids=["median", "trimmed-mean", "norm-bounding"])
def test_robust_aggregation_keeps_accuracy(fedavg, strategy, floor):
    assert _accuracy(strategy, ATTACK) > fedavg["clean"] + floor


# --- omniscient attacks from the literature -----------------------------------------------------------------
def _round(rows: list[list[float]], trained: list[bool] | None = None) -> RoundUpdates:
    return RoundUpdates(list(range(len(rows))), torch.ones(len(rows)), {"w": torch.tensor(rows, dtype=torch.float64)},
                        {} if trained is None else {"w": torch.tensor(trained)})


def _attack(kind: str, malicious: list[int], n: int, scale: float = 10.0) -> Attack:
    mask = np.zeros(n, dtype=bool)
    mask[malicious] = True
    return Attack(mask, kind, scale)  # type: ignore[arg-type]


BENIGN = [[1.0, 0.0], [2.0, 4.0], [3.0, 2.0], [6.0, 2.0]]  # mean (3, 2), sample std (2.160, 1.633)


def test_alie_z_follows_baruch_et_al():
    # n = 50, f = 12 (24% malicious): s = 26 - 12 = 14, z = Φ⁻¹(36/50) ≈ 0.58
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))
    assert alie_z(50, 12) == pytest.approx(0.583, abs=1e-3)
    assert alie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(13 / 20))  # s = 11 - 4 = 7
    assert math.isfinite(alie_z(10, 6))  # s kept >= 1 once f reaches n / 2


def test_alie_sends_mean_minus_z_std_of_the_benign_updates():
    updates = _round(BENIGN + [[50.0, 50.0], [-7.0, 9.0]])
    assert _attack("alie", [4, 5], 6).poison(updates, rnd=0) == 2
    benign = torch.tensor(BENIGN, dtype=torch.float64)
    want = benign.mean(0) - alie_z(6, 2) * benign.std(0)  # n = 6, f = 2: s = 2, z = Φ⁻¹(4/6)
    assert torch.allclose(updates.deltas["w"][4], want) and torch.allclose(updates.deltas["w"][5], want)
    assert torch.equal(updates.deltas["w"][:4], benign)  # honest rows untouched


def test_ipm_sends_minus_epsilon_times_the_benign_mean():
    updates = _round(BENIGN + [[50.0, 50.0]])
    _attack("ipm", [4], 5, scale=0.5).poison(updates, rnd=0)
    assert updates.deltas["w"][4].tolist() == [-1.5, -1.0]  # -0.5 x (3, 2)


def test_omniscient_attacks_use_only_clients_that_trained_the_parameter():
    updates = _round(BENIGN[:3] + [[0.0, 0.0], [0.0, 0.0], [50.0, 50.0]],
                     trained=[True, True, True, False, False, True])
    _attack("ipm", [3, 5], 6, scale=1.0).poison(updates, rnd=0)
    assert updates.deltas["w"][5].tolist() == [-2.0, -2.0]  # -mean of clients 0-2; 3 and 4 did not train w
    assert updates.deltas["w"][3].tolist() == [0.0, 0.0]  # a malicious client without w sends none
    assert updates.deltas["w"][4].tolist() == [0.0, 0.0]


def _digits(strategy: dict, attack: dict | None) -> float:
    """Dirichlet (alpha 0.5) digits, 100 clients, 20 per round, 15 rounds: about a second per run."""
    raw = {"rounds": 15, "clients_per_round": 20, "client": {"lr": 0.1}, "checkpoint": False,
           "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 100},
           "strategy": strategy, "eval": {"every": 15}, **({"attack": attack} if attack else {})}
    server, _ = build_server(parse_config(raw), None)
    return server.run(15)[-1].eval["accuracy"]


def test_krum_resists_a_scale_attack_that_breaks_fedavg():
    attack = {"fraction": 0.2, "kind": "scale", "scale": 1000.0}
    krum = {"name": "krum", "options": {"byzantine": 6}}
    assert _digits({"name": "fedavg"}, attack) < 0.2
    assert _digits(krum, attack) > _digits(krum, None) - 0.1


def test_ipm_breaks_krum_where_sign_flipping_does_not():
    """Xie et al.'s point: -0.1 x the benign mean, sent by every attacker alike, wins Krum's vote."""
    krum = {"name": "krum", "options": {"byzantine": 6}}
    flipped = _digits(krum, {"fraction": 0.2, "kind": "sign-flip"})
    assert flipped > 0.45  # Krum ignores the flipped updates: they sit far from everyone
    assert _digits(krum, {"fraction": 0.2, "kind": "ipm", "scale": 0.1}) < 0.2  # chance is 0.1
