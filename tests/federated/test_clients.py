import numpy as np
import pytest
import torch

from pocketlearn.data.synthetic import Synthetic
from pocketlearn.errors import ConfigError
from pocketlearn.federated.clients import (
    InMemoryClients,
    ResampledClients,
    SyntheticClients,
    client_sizes,
    client_stats,
)


def _labelled(n: int = 300, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % classes


def test_a_resampled_population_may_be_far_larger_than_the_data():
    x, y = _labelled()
    clients = ResampledClients(x, y, num_clients=1_000_000, alpha=0.5, mean_size=20, sigma=1.0, seed=0)
    assert len(clients) == 1_000_000 and clients.sizes.nbytes == 4 * 1_000_000  # one int32 per client, no objects
    cohort = clients.take([999_999, 7])
    assert [len(i) for i in cohort.indices] == [clients.sizes[999_999], clients.sizes[7]]
    assert cohort.x is x  # indices into the data set: nothing copied


def test_a_resampled_client_is_the_same_whenever_it_is_asked_for():
    x, y = _labelled()
    one = ResampledClients(x, y, 5_000, alpha=0.5, mean_size=20, sigma=1.0, seed=1)
    two = ResampledClients(x, y, 5_000, alpha=0.5, mean_size=20, sigma=1.0, seed=1)
    assert np.array_equal(one.indices_of(4321), two.take([4321]).indices[0])
    assert not np.array_equal(one.indices_of(4321), one.indices_of(4322))


def test_small_alpha_gives_clients_few_classes_and_sizes_have_the_mean_asked_for():
    x, y = _labelled()
    skewed = ResampledClients(x, y, 2_000, alpha=0.05, mean_size=40, sigma=1.0, seed=0)
    even = ResampledClients(x, y, 2_000, alpha=100.0, mean_size=40, sigma=1.0, seed=0)

    def classes(c: ResampledClients) -> float:
        return float(np.mean([len(np.unique(y[c.indices_of(k)].numpy())) for k in range(200)]))

    assert classes(skewed) < 3 < 8 < classes(even)
    assert skewed.sizes.mean() == pytest.approx(40, rel=0.1) and skewed.sizes.min() >= 1


def test_sizes_need_a_mean_of_at_least_one_sample():
    with pytest.raises(ConfigError, match="mean_size"):
        client_sizes(10, 0.5, 1.0, 0)


def test_synthetic_clients_hold_their_own_generated_samples():
    source = Synthetic(1.0, 1.0, seed=2)
    clients = SyntheticClients(source, num_clients=2_000_000, mean_size=30, sigma=1.0)
    cohort = clients.take([1_999_999, 3])
    big, small = (int(clients.sizes[c]) for c in (1_999_999, 3))
    assert [len(i) for i in cohort.indices] == [big, small] and len(cohort.x) == big + small
    x3, y3 = source.samples(3, small)
    assert torch.equal(cohort.x[cohort.indices[1]], x3) and torch.equal(cohort.y[cohort.indices[1]], y3)


def test_statistics_cover_any_population():
    x, y = _labelled()
    split = InMemoryClients(x, y, [np.arange(0, 100), np.arange(100, 300)])
    assert client_stats(split)["clients"] == 2 and "label_skew_tv" in client_stats(split)
    lazy = client_stats(ResampledClients(x, y, 1_000, alpha=0.5, mean_size=20, sigma=1.0, seed=0))
    assert lazy["clients"] == 1_000 and "label_skew_tv" not in lazy


SYNTHETIC = {"name": "synthetic-run", "rounds": 3, "clients_per_round": 20, "seed": 0,
             "data": {"name": "synthetic", "partition": "natural", "num_clients": 1_000_000, "mean_size": 20},
             "model": {"name": "synthetic-logreg"}, "client": {"lr": 0.1, "batch_size": 10}, "eval": {"every": 1}}


def test_a_million_client_population_trains_and_resumes_to_the_same_model(tmp_path):
    from pocketlearn.federated.experiment import build_server
    from tests.federated.configs import config_with

    config = config_with(SYNTHETIC)
    straight, data = build_server(config, tmp_path / "straight")
    assert len(data.clients) == 1_000_000 and len(straight.clients.sizes) == 1_000_000
    records = straight.run(3)
    assert all(r.finished == 20 for r in records) and all(r.bytes_up > 0 for r in records)
    half, _ = build_server(config, tmp_path / "halfway")
    half.run(2)
    again, _ = build_server(config, tmp_path / "halfway")
    assert again.resume() and again.round == 2
    again.run(3)
    for name, p in straight.params.items():
        assert torch.equal(p, again.params[name])


def test_a_private_run_is_charged_for_sampling_from_the_whole_population():
    from pocketlearn.federated.experiment import build_server
    from tests.federated.configs import config_with

    config = config_with(SYNTHETIC, devices__availability=False, strategy={
        "name": "dp-fedavg", "options": {"dp": {"clip": 1.0, "noise_multiplier": 1.0}}})
    server, _ = build_server(config, None)
    assert server.strategy.mechanism.num_clients == 1_000_000


def test_a_resampled_population_larger_than_its_data_learns():
    from pocketlearn.federated.experiment import build_server
    from tests.federated.configs import config_with

    config = config_with({"name": "r", "rounds": 10, "clients_per_round": 10, "model": {"name": "digits-mlp"},
                          "data": {"name": "digits", "partition": "resample", "num_clients": 50_000,
                                   "mean_size": 20, "alpha": 0.3}, "client": {"lr": 0.1}, "eval": {"every": 10}})
    server, data = build_server(config, None)
    assert len(data.clients) == 50_000 > len(data.clients.x)
    before = server.evaluate(server.model)["accuracy"]
    records = server.run(10)
    assert all(r.finished == 10 for r in records) and records[-1].eval["accuracy"] > before + 0.3


def test_a_lazy_populations_clients_can_be_written_for_devices(tmp_path):
    from pocketlearn.data.files import load_examples
    from pocketlearn.federated.experiment import load_federated_data
    from pocketlearn.federated.flower.partition import write_partition
    from tests.federated.configs import config_with

    config = config_with({"name": "p", "data": {"name": "digits", "partition": "resample", "num_clients": 50_000,
                                                "mean_size": 12}})
    paths = write_partition(config, tmp_path, clients=[7, 49_999])
    assert [p.name for p in paths] == ["client-00007.pt", "client-49999.pt"]
    own = load_federated_data(config).clients.take([49_999])
    x, y, _ = load_examples(paths[1])
    assert torch.equal(x, own.x[own.indices[0]]) and torch.equal(y, own.y[own.indices[0]])
