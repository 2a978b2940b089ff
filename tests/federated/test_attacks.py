import pytest

from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server


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
