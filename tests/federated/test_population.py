import pytest

from pocketlearn.federated.experiment import build_server
from tests.federated.configs import config_with
from tests.federated.test_traces import BASE


def test_a_methods_simulated_time_follows_its_measured_step_cost(tmp_path):
    config = config_with(BASE, client={"method": "mezo", "lr": 0.01, "options": {"eps": 1e-3}})
    server, _ = build_server(config, tmp_path)
    measured = server.clients.step_cost["mezo"]
    assert measured > 0 and "backprop" not in server.clients.step_cost
    args = {"samples": 1_000, "down_bytes": 0, "up_bytes": 0}
    server.clients.step_cost = {"mezo": 1.0}
    once = server.clients.seconds(0, **args)
    server.clients.step_cost = {"mezo": 3.0}
    assert server.clients.seconds(0, **args) == pytest.approx(3 * once)
    server.run(1)  # the checkpoint keeps the figures this process measured: a resumed run times alike
    again, _ = build_server(config, tmp_path)
    assert again.resume() and again.clients.step_cost == {"mezo": 3.0}
    plain, _ = build_server(config_with(BASE), None)
    assert plain.clients.step_cost == {}  # every client backpropagates: nothing to measure
