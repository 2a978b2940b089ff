"""An engine needs nothing but the round's plan: real devices train from a plan built by hand, no server."""

import pytest
import torch

from pocketlearn.federated.codecs import encode_dense
from pocketlearn.federated.experiment import build_template, load_federated_data, local_training
from pocketlearn.federated.round import InTheClear, Payloads, RoundPlan
from pocketlearn.federated.simulate import InProcessEngine
from tests.federated.flower_local import LocalGrid, config

pytest.importorskip("flwr")


def test_the_flower_engine_trains_a_plan_as_the_simulator_does(tmp_path):
    from pocketlearn.federated.flower.deploy import ServeSettings
    from pocketlearn.federated.flower.device import describe_examples
    from pocketlearn.federated.flower.engine import FlowerEngine
    from pocketlearn.federated.flower.partition import write_partition

    cfg = config(rounds=1)
    files = write_partition(cfg, tmp_path / "data", clients=[0, 1, 2])
    nodes = [describe_examples(f, "laptop-16g").node_config() for f in files]
    engine = FlowerEngine(LocalGrid(nodes, ServeSettings(cfg, tmp_path / "run").run_config()), round_timeout_s=5.0,
                          poll_s=0.01, say=lambda line: None)
    engine.num_clients = 5
    template = build_template(cfg)
    params = {n: p.detach().clone() for n, p in template.named_parameters()}
    plan = RoundPlan(rnd=2, client_ids=[0, 2], local=local_training(cfg, 0.0), weights=encode_dense(params),
                     wire_shapes={n: p.shape for n, p in params.items()}, run_id="by-hand")
    there = engine.run(params, plan)
    assert there.updates.client_ids == [0, 2]
    assert isinstance(there.wire, Payloads) and len(there.wire.sizes) == 2  # what crossed the network
    data = load_federated_data(cfg)
    here = InProcessEngine(template, data.clients).run(params, plan)
    assert here.wire == InTheClear()  # simulated clients: the server encodes their updates itself
    for name, d in here.updates.deltas.items():
        torch.testing.assert_close(there.updates.deltas[name], d, rtol=1e-4, atol=1e-6, msg=name)
