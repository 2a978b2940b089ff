from pocketlearn.federated.config import parse_config
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.personalize import personalize


def test_local_fine_tuning_fits_skewed_clients_better_than_the_global_model(tmp_path):
    cfg = parse_config({"rounds": 5, "clients_per_round": 10,
                        "data": {"name": "digits", "partition": "dirichlet", "alpha": 0.1, "num_clients": 20}})
    server, data = build_server(cfg, tmp_path)
    server.run(5)
    result = personalize(server.model, server.params, server.engine.template, data.clients,
                         server.local, num_clients=12, epochs=3)
    assert len(result["clients"]) == 12
    assert result["mean"]["accuracy_after"] > result["mean"]["accuracy_before"]
    assert result["mean"]["loss_after"] < result["mean"]["loss_before"]
