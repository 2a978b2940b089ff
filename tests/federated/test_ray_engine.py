import copy
import os

import numpy as np
import pytest
import torch

from pocketlearn.errors import TrainingError
from pocketlearn.federated.clients import InMemoryClients
from pocketlearn.federated.round import InTheClear, Payloads, RoundResult, SeedPairs
from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.models import mlp

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    # 4 CPUs: the shared engine's two actors hold 2 for the whole module, and a run that builds its own engine
    # needs free ones (an actor without a CPU never starts: the test would hang)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(local_ray):
    """A small model and data, and one Ray engine (two actors) over them for every case."""
    from pocketlearn.federated.ray_engine import RayEngine

    torch.manual_seed(0)
    model = mlp(8, (16,), 3)
    x, y = torch.randn(80, 8), torch.randint(0, 3, (80,))
    indices = [np.arange(i, 80, 10) for i in range(10)]
    engine = RayEngine(copy.deepcopy(model), InMemoryClients(x, y, indices), num_workers=2)
    yield model, x, y, indices, engine
    engine.shutdown()


@pytest.mark.parametrize("local", [LocalTraining(lr=0.1, batch_size=4), LocalTraining(method="bias", lr=0.1),
                                   LocalTraining(method="mezo", lr=0.01, batch_size=4)],
                         ids=["vectorized", "one-by-one", "mezo-histories"])
def test_ray_gives_the_in_process_result(setup, local):
    model, x, y, indices, engine = setup
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = [0, 2, 3, 5, 7, 9]
    here = InProcessEngine(copy.deepcopy(model), InMemoryClients(x, y, indices)).train(params, ids, 3, local)
    there = engine.train(params, ids, 3, local)
    assert there.updates.client_ids == ids
    for name, d in here.updates.deltas.items():
        assert torch.equal(there.updates.deltas[name], d), name
    assert torch.equal(there.train_loss, here.train_loss)
    assert there.wire == here.wire  # seed exchange sends MeZO's (seed, g) pairs; other methods their updates
    assert isinstance(here.wire, SeedPairs if local.method == "mezo" else InTheClear)


def test_a_run_on_ray_ends_with_the_in_process_model(local_ray, tmp_path):
    from pocketlearn.federated.config import parse_config
    from pocketlearn.federated.experiment import build_server

    raw = {"rounds": 3, "clients_per_round": 6, "data": {"name": "digits", "num_clients": 30}}
    finals = []
    for engine in ("inprocess", "ray"):
        server, _ = build_server(parse_config({**raw, "engine": engine}), tmp_path / engine)
        server.run(3)
        finals.append({n: p.detach().clone() for n, p in server.params.items()})
        if engine == "ray":
            server.engine.shutdown()
    for name, p in finals[0].items():
        assert torch.equal(finals[1][name], p), name


def test_joining_workers_keeps_every_field_and_parameter():
    from pocketlearn.federated.ray_engine import _concat
    from pocketlearn.federated.updates import ClientUpdate, RoundUpdates

    a = RoundResult(RoundUpdates.stack([ClientUpdate(3, 2, {"w": torch.ones(2), "b": torch.ones(1)})]),
                    torch.tensor([0.5]), SeedPairs([[(7, 0.25)]]))
    b = RoundResult(RoundUpdates.stack([ClientUpdate(5, 4, {"w": torch.full((2,), 2.0)})]),  # trained no "b"
                    torch.tensor([0.7]), SeedPairs([[(9, -1.0)]]))
    joined = _concat([a, b])
    u = joined.updates
    assert u.client_ids == [3, 5] and u.num_samples.tolist() == [2.0, 4.0]
    assert torch.equal(u.deltas["b"], torch.tensor([[1.0], [0.0]])) and u.trained["b"].tolist() == [True, False]
    assert "w" not in u.trained
    assert joined.wire == SeedPairs([[(7, 0.25)], [(9, -1.0)]])
    assert _concat([RoundResult(a.updates, a.train_loss, Payloads([40])),
                    RoundResult(b.updates, b.train_loss, Payloads([30]))]).wire == Payloads([40, 30])
    with pytest.raises(TrainingError, match="disagree"):
        _concat([a, RoundResult(b.updates, b.train_loss)])
    assert joined.train_loss.tolist() == pytest.approx([0.5, 0.7])
