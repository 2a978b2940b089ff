import copy
import os

import numpy as np
import pytest
import torch

from pocketlearn.federated.simulate import InProcessEngine, LocalTraining
from pocketlearn.models import mlp

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.parametrize("local", [LocalTraining(lr=0.1, batch_size=4), LocalTraining(method="bias", lr=0.1)],
                         ids=["vectorized", "one-by-one"])
def test_ray_gives_the_in_process_result(local_ray, local):
    from pocketlearn.federated.ray_engine import RayEngine

    torch.manual_seed(0)
    model = mlp(8, (16,), 3)
    x, y = torch.randn(80, 8), torch.randint(0, 3, (80,))
    indices = [np.arange(i, 80, 10) for i in range(10)]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = [0, 2, 3, 5, 7, 9]
    here = InProcessEngine(copy.deepcopy(model), x, y, indices).train(params, ids, 3, local)
    engine = RayEngine(copy.deepcopy(model), x, y, indices, num_workers=2)
    there = engine.train(params, ids, 3, local)
    engine.shutdown()
    assert there.updates.client_ids == ids
    for name, d in here.updates.deltas.items():
        assert torch.equal(there.updates.deltas[name], d), name
    assert torch.equal(there.train_loss, here.train_loss)


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
