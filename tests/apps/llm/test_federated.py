import numpy as np
import pytest
import torch

from pocketlearn.apps.llm import FederatedLLMConfig
from pocketlearn.apps.llm.federated import build_llm_server, run_federated
from pocketlearn.apps.llm.portion import top_block_targets
from pocketlearn.errors import BudgetError, ConfigError
from pocketlearn.federated.clients import InMemoryClients
from pocketlearn.federated.experiment import FederatedData
from tests.apps.llm.conftest import tiny_llama, windows

LINES = ["to be or not to be, that is the question. ", "all the world's a stage, and all the men and women. ",
         "now is the winter of our discontent, made glorious. ", "a horse, a horse, my kingdom for a horse! "]


def users_data():
    """Four users, each repeating their own line: 4 train windows each, held-out windows pooled."""
    xs, ys, xts, yts = [], [], [], []
    for line in LINES:
        x, y = windows(line * 6)
        xs.append(x[:4])
        ys.append(y[:4])
        xts.append(x[4:6])
        yts.append(y[4:6])
    indices = [np.arange(4 * k, 4 * k + 4) for k in range(len(LINES))]
    return FederatedData(InMemoryClients(torch.cat(xs), torch.cat(ys), indices), torch.cat(xts), torch.cat(yts),
                         [f"Play/USER{k}" for k in range(len(LINES))])


def config(**kw):
    base = {"users": 4, "clients_per_round": 2, "rounds": 2, "batch_size": 2}
    return FederatedLLMConfig(**(base | kw))


def test_fedit_lowers_held_out_perplexity():
    _, report = run_federated(tiny_llama(), users_data(), config(rounds=3, clients_per_round=4, lr=1e-2))
    ppl = [p.perplexity for p in report.points]
    assert len(ppl) == 4 and ppl[-1] < 0.7 * ppl[0]
    # every client uploads all its adapters as float32 (plus a small header)
    assert report.points[1].bytes_up_per_client >= 4 * report.trainable_params


def test_mezo_seed_exchange_gives_the_server_the_clients_model_in_a_few_bytes():
    template, data = tiny_llama(), users_data()
    seeds, _ = run_federated(template, data, config(mode="mezo", lr=2e-3))
    # the same run with dense uploads: the server averages the clients' own deltas
    dense = build_llm_server(template, data, config(mode="mezo", lr=2e-3))
    dense.policy.seed_exchange = False
    dense.run(2)
    for name, p in seeds.params.items():
        torch.testing.assert_close(p, dense.params[name], rtol=0, atol=0)
    assert any((p != q).any() for p, q in zip(seeds.params.values(), build_llm_server(
        template, data, config(mode="mezo")).params.values(), strict=True))  # and it did train


def test_mezo_uploads_kilobytes_not_the_adapters():
    _, report = run_federated(tiny_llama(), users_data(), config(mode="mezo", rounds=1))
    steps = 2  # 4 windows at batch 2
    assert report.points[1].bytes_up_per_client < 12 * steps + 200
    assert report.points[1].bytes_up_per_client < 4 * report.trainable_params / 10


def test_portion_mode_leaves_adapters_nobody_trained_unchanged():
    template = tiny_llama()
    cfg = config(mode="portion", devices={"laptop-16g": 1.0}, top_layers={"laptop-16g": 1})
    server = build_llm_server(template, users_data(), cfg)
    start = {n: p.detach().clone() for n, p in server.params.items()}
    server.run(2)
    top = top_block_targets(template, 1)
    assert top and all(t.startswith("model.layers.1.") for t in top)
    changed = {n for n, p in server.params.items() if not torch.equal(p, start[n])}
    lower = {n for n in start if n.startswith("model.layers.0.")}
    assert lower and not changed & lower  # block 0's adapters: trained by no client
    assert {n for n in start if "lora_B" in n and n.startswith("model.layers.1.")} <= changed


def test_portion_mode_averages_each_adapter_over_the_clients_that_trained_it():
    cfg = config(mode="portion", rounds=1, clients_per_round=4, devices={"laptop-16g": 1.0, "phone-4g": 1.0},
                 top_layers={"phone-4g": 1})
    server = build_llm_server(tiny_llama(), users_data(), cfg)
    strong = torch.tensor([server.clients.fits[i].device.name == "laptop-16g" for i in server.clients.device_index])
    assert 0 < int(strong.sum()) < 4, "the device draw should mix both classes"
    start = {n: p.detach().clone() for n, p in server.params.items()}
    updates = server.engine.train(start, [0, 1, 2, 3], 1, server.local).updates  # what round 1 will compute
    server.run(1)
    name = next(n for n in start if n.startswith("model.layers.0.") and "lora_B" in n)
    assert torch.equal(updates.trained[name], strong)  # only the laptops trained block 0
    torch.testing.assert_close(server.params[name] - start[name], updates.deltas[name][strong].mean(0))
    top = next(n for n in start if n.startswith("model.layers.1.") and "lora_B" in n)
    assert top not in updates.trained  # every client trained block 1
    torch.testing.assert_close(server.params[top] - start[top], updates.deltas[top].mean(0))


def test_a_device_that_fits_nothing_is_refused(tmp_path):
    profiles = tmp_path / "devices.toml"
    profiles.write_text('[devices.tag]\nmemory_budget = "4KiB"\n')
    with pytest.raises(BudgetError, match="no device class can train: tag needs"):
        build_llm_server(tiny_llama(), users_data(), config(devices={"tag": 1.0}, device_profiles=str(profiles)))


def test_bad_config_reports_every_problem():
    with pytest.raises(ConfigError, match="rounds should be >= 1.*clients_per_round .* exceeds users"):
        FederatedLLMConfig(rounds=0, users=2, clients_per_round=3)
    with pytest.raises(ConfigError, match="top_layers only applies"):
        FederatedLLMConfig(top_layers={"laptop-16g": 2})
    with pytest.raises(ConfigError, match=r"top_layers names devices \['phone-1g'\] that are not in devices"):
        FederatedLLMConfig(mode="portion", top_layers={"phone-1g": 2})
