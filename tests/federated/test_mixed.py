
import pytest
import torch
from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.mixed import ZO_WIRE, Expansion, private_combine, round_options, secure_combine
from pocketlearn.federated.strategies import make_strategy
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates
from pocketlearn.methods import make_method
from pocketlearn.methods.mezo import noise, pool_seeds
from tests.federated.configs import config_with

LR = {"backprop": 0.1, "bias": 0.1, "lora": 0.1, "mezo": 0.01}
PINS = {"laptop-16g": "backprop", "phone-4g": "lora", "phone-1g": "mezo"}
MIXED = {"name": "m", "rounds": 3, "clients_per_round": 9, "checkpoint": False,
         "data": {"name": "digits", "partition": "iid", "num_clients": 18},
         "model": {"name": "digits-mlp"}, "eval": {"every": 3},
         "devices": {"mix": {"laptop-16g": 0.3, "phone-4g": 0.4, "phone-1g": 0.3}, "availability": False},
         "client": {"methods": PINS, "lr": 0.1, "per_method": {"mezo": {"lr": 0.003}, "lora": {"rank": 4}}}}


def _config(**changes):
    return config_with(MIXED, **changes)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _expansion(model: nn.Module, rnd: int = 1) -> Expansion:
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    options = {m: round_options(m, {"lr": lr, **({"rank": 2} if m == "lora" else {})}, seed=5, rnd=rnd)
               for m, lr in LR.items()}
    return Expansion.build(model, params, options)


def _wire(expansion: Expansion) -> dict[str, RoundUpdates]:
    """One or two clients per method, with arbitrary wire updates (a fixed generator)."""
    g = torch.Generator().manual_seed(1)

    def rand(shape):
        return torch.randn(shape, generator=g)

    dense = [ClientUpdate(0, 2, {n: rand(s) for n, s in expansion.wire["backprop"].items()}),
             ClientUpdate(1, 5, {n: rand(s) for n, s in expansion.wire["backprop"].items()})]
    return {"backprop": RoundUpdates.stack(dense),
            "bias": RoundUpdates.stack([ClientUpdate(2, 1, {n: rand(s) for n, s in expansion.wire["bias"].items()})]),
            "lora": RoundUpdates.stack([ClientUpdate(3, 3, {n: rand(s) for n, s in expansion.wire["lora"].items()})]),
            "mezo": RoundUpdates.stack([ClientUpdate(4, 4, {ZO_WIRE: rand(expansion.wire["mezo"][ZO_WIRE])})])}


def test_the_rule_is_the_hand_computed_per_parameter_mean():
    model = _tiny()
    expansion = _expansion(model)
    wire = _wire(expansion)
    # by hand: what each client changed, in the global parameters' names
    by_client = []
    for u in wire["backprop"].client_delta(0), wire["backprop"].client_delta(1), wire["bias"].client_delta(0):
        by_client.append(dict(u))
    (b_name, b), = wire["lora"].client_delta(0).items()
    weight, a, scale = expansion.lora[b_name]
    assert weight == "0.weight" and scale == 16 / 2  # alpha / rank
    by_client.append({"0.weight": (16 / 2) * b @ a})
    c = wire["mezo"].client_delta(0)[ZO_WIRE]
    pool = pool_seeds(round_options("mezo", {}, seed=5, rnd=1)["pool_seed"], 64)
    names = sorted(n for n, _ in model.named_parameters())
    by_client.append({n: -LR["mezo"] * sum(float(c[j]) * noise(p, pool[j], names.index(n)) for j in range(64))
                      for n, p in model.named_parameters()})
    weights = [2, 5, 1, 3, 4]
    expected = {}
    for name, _ in model.named_parameters():
        who = [(w, d[name]) for w, d in zip(weights, by_client, strict=True) if name in d]
        expected[name] = sum(w * d for w, d in who) / sum(w for w, _ in who)
    assert "0.weight" not in by_client[2]  # bias-only (and its head) leaves the hidden weights alone

    expanded = RoundUpdates.stack([ClientUpdate(u.client_ids[k], int(u.num_samples[k]), d)
                                   for m, u in wire.items()
                                   for k, d in enumerate(expansion.expand(m, u).client_delta(k)
                                                         for k in range(len(u)))])
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = {n: p.clone() for n, p in params.items()}
    make_strategy("fedavg").apply(params, expanded)
    for name in params:
        torch.testing.assert_close(params[name] - start[name], expected[name], atol=1e-5, rtol=1e-4)

    # sum first, expand once: the same mean (the maps are linear)
    sums = {m: {n: (u.num_samples.view(-1, *[1] * (d.dim() - 1)) * d).sum(0) for n, d in u.deltas.items()}
            for m, u in wire.items()}
    combined = expansion.combine(sums, {m: float(u.num_samples.sum()) for m, u in wire.items()})
    for name in params:
        torch.testing.assert_close(combined[name], expected[name], atol=1e-5, rtol=1e-4)


def test_wire_updates_expand_to_what_the_clients_trained():
    model = _tiny()
    expansion = _expansion(model, rnd=3)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for method in ("lora", "mezo"):
        opts = round_options(method, {"lr": LR[method], **({"rank": 2} if method == "lora" else {})}, seed=5, rnd=3)
        trainer = make_method(method, _tiny(), **opts)
        start = {n: p.detach().clone() for n, p in trainer.trainable_parameters().items()}
        for _ in range(5):
            trainer.step((x, y))
        if method == "lora":
            wire = {n: p.detach() - start[n] for n, p in trainer.trainable_parameters().items()}
            assert all(".lora_B." in n for n in wire)  # A stays frozen and is never sent
            layer = trainer.model[0]
            trained = layer.get_delta_weight("default")
            torch.testing.assert_close(expansion.to_params(wire)["0.weight"], trained, atol=1e-6, rtol=1e-5)
        else:
            from pocketlearn.methods.mezo import pool_coefficients

            pool = pool_seeds(opts["pool_seed"], opts["seed_pool"])
            delta = expansion.to_params({ZO_WIRE: pool_coefficients(trainer.history, pool)})
            for n, p in trainer.model.named_parameters():
                torch.testing.assert_close(delta[n], p.detach() - _tiny().state_dict()[n], atol=1e-5, rtol=1e-4)


def test_a_mixed_run_learns_and_reports_each_method(tmp_path):
    server, _ = build_server(_config(), tmp_path)
    before = {n: p.clone() for n, p in server.params.items()}
    records = server.run(3)
    seen = {m for r in records for m in r.by_method}
    assert seen == {"backprop", "lora", "mezo"}
    assert records[-1].eval["accuracy"] > 0.5
    assert all(not torch.equal(before[n], p) for n, p in server.params.items())
    per_update = {}
    for r in records:
        for m, n in r.by_method.items():
            per_update.setdefault(m, []).append(r.bytes_by_method[m] / n)
    assert max(per_update["mezo"]) < min(per_update["lora"]) < min(per_update["backprop"])
    assert max(per_update["mezo"]) < 1000  # 64 coefficients and a header


def test_auto_gives_each_device_the_best_method_its_budget_allows(tmp_path):
    profiles = tmp_path / "devices.toml"
    profiles.write_text('[devices.big]\nmemory_budget = "1GiB"\n[devices.tiny]\nmemory_budget = "1KiB"\n')
    cfg = _config(client__method="auto", client__methods={},
                  devices={"mix": {"big": 0.5, "tiny": 0.5}, "profiles": str(profiles), "availability": False})
    server, _ = build_server(cfg, tmp_path)
    methods = {f.device.name: f.method for f in server.clients.fits}
    assert methods["big"] == "backprop" and methods["tiny"] is None
    assert "no method fits" in next(f.note for f in server.clients.fits if f.device.name == "tiny")


@pytest.mark.parametrize("changes,message", [
    ({"client__per_method": {"mezo": {"weight_decay": 0.1}}}, "weight_decay = 0"),
    ({"client__options": {"rank": 4}}, "client.per_method"),
    ({"client__methods": {"watch": "lora"}}, "watch"),
    ({"client__methods": {"laptop-16g": "pepita"}}, "cannot take part"),
    ({"eval__personalize_clients": 2}, "not supported yet"),
])
def test_mixed_runs_refuse_what_they_cannot_combine(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        server, _ = build_server(_config(**changes), tmp_path)
        server.run(1)


def test_private_mixed_rounds_clip_and_noise_each_update_in_its_own_space():
    model = _tiny()
    expansion = _expansion(model)
    wire = _wire(expansion)
    groups = list(wire.items())
    setup = type("S", (), {"updater_share": lambda self, e: {n: 1.0 for n, _ in model.named_parameters()}})()
    strategy = make_strategy("dp-fedavg", expected_clients=5, num_clients=50,
                             dp={"clip": 1e6, "noise_multiplier": 0.0})
    exact = private_combine([(m, RoundUpdates(u.client_ids, u.num_samples, dict(u.deltas))) for m, u in groups],
                            expansion, setup, strategy.mechanism)
    # no clipping, no noise: the uniform mean of every client's update over the five clients
    for name, value in exact.items():
        total = sum(expansion.expand(m, u).deltas.get(name, torch.zeros(1)).sum(0) for m, u in groups)
        torch.testing.assert_close(value, total / 5, atol=1e-5, rtol=1e-4)

    strategy = make_strategy("dp-fedavg", expected_clients=5, num_clients=50,
                             dp={"clip": 0.5, "noise_multiplier": 1.0, "kind_scale": {"zo": 10.0}})
    clipped = [(m, RoundUpdates(u.client_ids, u.num_samples, {n: d.clone() for n, d in u.deltas.items()}))
               for m, u in groups]
    private_combine(clipped, expansion, setup, strategy.mechanism)
    assert strategy.epsilon_so_far() > 0
    always = {n for shapes in expansion.wire.values() for n in shapes}
    assert ZO_WIRE in always and any(".lora_B." in n for n in always)


def test_secure_mixed_rounds_unmask_each_kinds_sum_only():
    model = _tiny()
    expansion = _expansion(model)
    wire = _wire(expansion)
    scaled = {m: RoundUpdates(u.client_ids, u.num_samples, {n: d * 0.01 for n, d in u.deltas.items()})
              for m, u in wire.items()}
    total = sum(float(u.num_samples.sum()) for u in scaled.values())
    sums = {m: {n: (u.num_samples.view(-1, *[1] * (d.dim() - 1)) * d).sum(0) / total for n, d in u.deltas.items()}
            for m, u in scaled.items()}
    plain = expansion.combine(sums, {m: float(u.num_samples.sum()) / total for m, u in scaled.items()})
    row, sent, received = secure_combine(list(scaled.items()), expansion, threshold=0.5, clip=1.0, neighbours=None,
                                         seed=1)
    assert sent > 0 and received > 0
    for name, value in plain.items():
        torch.testing.assert_close(row.deltas[name][0], value, atol=1e-4, rtol=1e-3)


def test_mixed_runs_take_secure_aggregation_and_dp(tmp_path):
    secure, _ = build_server(_config(secagg={"enabled": True, "clip": 1.0}), tmp_path / "s")
    assert secure.run(2)[-1].bytes_up > 0
    private, _ = build_server(_config(strategy={"name": "dp-fedavg",
                                                "options": {"dp": {"clip": 1.0, "noise_multiplier": 0.5}}}),
                              tmp_path / "p")
    records = private.run(2)
    assert records[-1].epsilon is not None and records[-1].epsilon > 0
