import math
from dataclasses import replace

import dp_accounting as dpa
import numpy as np
import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.privacy import (
    AdaptiveClip,
    DPConfig,
    FixedClip,
    LocalNoise,
    PrivacyAccountant,
    PrivacyBudgetError,
    PrivacyMechanism,
    calibrate_noise,
    central_round_event,
    derived_generator,
    epsilon,
    rounds_within,
)
from pocketlearn.federated.privacy.config import NOT_PRIVATE, SECURE
from pocketlearn.federated.strategies import FedAvg
from pocketlearn.federated.strategies.dp_fedavg import DPFedAvg
from pocketlearn.federated.updates import ClientUpdate, RoundUpdates


def make_updates(k=6, scale=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = scale if scale is not None else torch.linspace(0.1, 5.0, k)
    ups = []
    for i in range(k):
        w, b = torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
        n = math.sqrt(w.pow(2).sum() + b.pow(2).sum())
        ups.append(ClientUpdate(i, 10 + i, {"w": w * scale[i] / n, "b": b * scale[i] / n}))
    return RoundUpdates.stack(ups)


# --- clipping -------------------------------------------------------------------------------------------------
def test_clipping_bounds_norms_and_leaves_small_updates_alone():
    u = make_updates()
    before = {n: d.clone() for n, d in u.deltas.items()}
    norms = FixedClip(1.0).clip_(u)
    assert torch.allclose(norms, torch.linspace(0.1, 5.0, 6), atol=1e-5)
    after = u.client_norms()
    assert (after <= 1.0 + 1e-5).all()
    small = norms <= 1.0
    for n in u.deltas:
        assert torch.equal(u.deltas[n][small], before[n][small])  # bit for bit
    assert torch.allclose(after[~small], torch.ones(int((~small).sum())), atol=1e-5)


def test_adaptive_clip_moves_toward_target_quantile():
    norms = torch.linspace(0.1, 10.0, 101)  # median 5.05
    clip = AdaptiveClip(0.5, target_quantile=0.5, lr=0.2, count_stddev=0.0)
    g = derived_generator(0, 0)
    for _ in range(200):
        clip.update(norms, expected_clients=len(norms), generator=g)
    assert 4.5 < clip.bound < 5.6
    high = AdaptiveClip(50.0, target_quantile=0.9, lr=0.2, count_stddev=2.0)  # noisy count still converges
    for _ in range(300):
        high.update(norms, expected_clients=len(norms), generator=g)
    assert 8.0 < high.bound < 10.2
    high.load_state_dict(clip.state_dict())
    assert high.bound == clip.bound


# --- noise ----------------------------------------------------------------------------------------------------
def pure_noise(k=5):
    u = make_updates(k, scale=torch.zeros(k))  # zero updates: the output is pure noise / expected
    u.deltas["big"] = torch.zeros(k, 200_000)
    return u


def test_central_noise_has_the_right_std_and_is_reproducible_only_when_asked():
    k, expected = 5, 10
    u = pure_noise(k)
    cfg = DPConfig(clip=2.0, noise_multiplier=1.5, seed=7, reproducible_noise=True)
    mech = PrivacyMechanism(cfg, expected_clients=expected, num_clients=100)
    out = mech.privatize(u, rnd=3)
    std = float(out["big"].std())
    assert std == pytest.approx(1.5 * 2.0 / expected, rel=0.01)
    assert abs(float(out["big"].mean())) < 4 * std / math.sqrt(200_000)
    u2 = make_updates(k, scale=torch.zeros(k))
    u2.deltas["big"] = torch.zeros(k, 200_000)
    same = PrivacyMechanism(cfg, expected_clients=expected, num_clients=100).privatize(u2, rnd=3)
    assert all(torch.equal(out[n], same[n]) for n in out)
    u3 = make_updates(k, scale=torch.zeros(k))
    u3.deltas["big"] = torch.zeros(k, 200_000)
    other = PrivacyMechanism(cfg, expected_clients=expected, num_clients=100).privatize(u3, rnd=4)
    assert not torch.equal(out["big"], other["big"])
    assert PrivacyMechanism(cfg, expected_clients=expected, num_clients=100).noise_source == NOT_PRIVATE


def test_default_central_noise_is_secret_and_not_regenerable_from_seed_and_round():
    cfg = DPConfig(clip=2.0, noise_multiplier=1.5, seed=7)
    one = PrivacyMechanism(cfg, expected_clients=10, num_clients=100).privatize(pure_noise(), rnd=3)["big"]
    two = PrivacyMechanism(cfg, expected_clients=10, num_clients=100).privatize(pure_noise(), rnd=3)["big"]
    assert float(one.std()) == pytest.approx(1.5 * 2.0 / 10, rel=0.01)  # the same noise level...
    assert not torch.equal(one, two)  # ...but two runs of one config draw different noise
    seeded = PrivacyMechanism(replace(cfg, reproducible_noise=True), expected_clients=10, num_clients=100)
    regenerated = seeded.privatize(pure_noise(), rnd=3)["big"]  # what anyone with the config could compute
    assert not torch.equal(one, regenerated)
    assert abs(float(torch.corrcoef(torch.stack([one, regenerated]))[0, 1])) < 0.02  # not even correlated
    assert PrivacyMechanism(cfg, expected_clients=10, num_clients=100).noise_source == SECURE


def test_central_noise_comes_from_the_os_csprng(monkeypatch):
    import secrets as secrets_module

    monkeypatch.setattr(secrets_module, "randbits", lambda bits: 12345)  # stand in for the OS's randomness
    mech = PrivacyMechanism(DPConfig(clip=1.0, noise_multiplier=1.0, seed=0), expected_clients=5, num_clients=50)
    out = mech.privatize(pure_noise(), rnd=1)
    g = torch.Generator().manual_seed(12345)
    torch.randn(3, generator=g)  # "b" comes first in name order
    expected = torch.randn(200_000, generator=g) * 1.0 / 5
    assert torch.equal(out["big"], expected)


def test_local_noise_per_client_std_and_mask():
    k = 4
    u = make_updates(k, scale=torch.zeros(k))
    u.deltas["big"] = torch.zeros(k, 100_000)
    u.trained["big"] = torch.tensor([True, True, False, True])
    cfg = DPConfig(clip=1.0, noise_multiplier=0.5, mode="local", seed=1)
    mech = PrivacyMechanism(cfg, expected_clients=k, num_clients=50)
    out = mech.privatize(u, rnd=1)
    assert torch.equal(u.deltas["big"][2], torch.zeros(100_000))  # not trained, not sent, not noised
    assert float(u.deltas["big"][0].std()) == pytest.approx(0.5, rel=0.02)
    assert float(out["big"].std()) == pytest.approx(0.5 * math.sqrt(3) / k, rel=0.02)
    assert mech.reports == {0: 1, 1: 1, 2: 1, 3: 1}


# --- accountant -----------------------------------------------------------------------------------------------
def replace_one_rdp():
    return dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)


def test_epsilon_matches_dp_accounting_fed_fixed_size_sampling_without_replacement():
    # a round draws 10 of 1000 clients without replacement; replacing one client moves the sum by 2 x clip
    event = dpa.SampledWithoutReplacementDpEvent(1000, 10, dpa.GaussianDpEvent(1.1 / 2))
    direct = replace_one_rdp().compose(dpa.SelfComposedDpEvent(event, 500)).get_epsilon(1e-5)
    assert epsilon(1.1, 1000, 10, 500, 1e-5, "rdp") == pytest.approx(direct, rel=1e-12)
    everyone = replace_one_rdp().compose(dpa.GaussianDpEvent(1.1 / 2), 5).get_epsilon(1e-5)
    assert epsilon(1.1, 10, 10, 5, 1e-5) == pytest.approx(everyone, rel=1e-12)  # no sampling, no amplification
    with pytest.raises(ConfigError, match="use accountant = 'rdp'"):  # dp-accounting's PLD has no such event
        epsilon(1.1, 1000, 10, 500, 1e-5, "pld")


def test_epsilon_grows_with_rounds_falls_with_noise_and_population():
    eps = [epsilon(1.0, 100, 2, r, 1e-5) for r in (10, 100, 1000)]
    assert eps[0] < eps[1] < eps[2]
    assert epsilon(2.0, 100, 2, 100, 1e-5) < epsilon(1.0, 100, 2, 100, 1e-5)
    assert epsilon(1.0, 200, 2, 100, 1e-5) < epsilon(1.0, 100, 2, 100, 1e-5)
    assert epsilon(0.0, 100, 2, 1, 1e-5) == math.inf


def test_calibrate_noise_reaches_the_target():
    z = calibrate_noise(3.0, 1e-5, 100, 5, 200)
    assert epsilon(z, 100, 5, 200, 1e-5) == pytest.approx(3.0, abs=0.01)
    assert epsilon(z, 100, 5, 200, 1e-5) <= 3.0 + 1e-9
    with pytest.raises(ConfigError, match="rdp"):
        calibrate_noise(3.0, 1e-5, 100, 5, 200, "pld")


def test_rounds_within_is_the_last_round_under_target():
    event = central_round_event(1.0, 50, 1)
    n = rounds_within(event, 2.0, 1e-5)
    assert epsilon(1.0, 50, 1, n, 1e-5) <= 2.0 < epsilon(1.0, 50, 1, n + 1, 1e-5)
    assert rounds_within(central_round_event(0.3, 10, 10), 0.5, 1e-5) == 0


def test_accountant_refuses_to_exceed_the_target_and_round_trips():
    acc = PrivacyAccountant(central_round_event(4.0, 100, 10), "rdp", 1e-5, target_epsilon=1.0)
    fit = acc.rounds_within()
    assert fit > 1
    acc.check(fit)
    with pytest.raises(PrivacyBudgetError, match=f"at most {fit} rounds fit"):
        acc.check(fit + 1)
    acc.step(5)
    other = PrivacyAccountant(central_round_event(4.0, 100, 10), "rdp", 1e-5)
    other.load_state_dict(acc.state_dict())
    assert other.epsilon() == acc.epsilon() > 0


# --- config ---------------------------------------------------------------------------------------------------
def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        DPConfig(clip=-1, noise_multiplier=-2, mode="global", accountant="gdp", delta=2)
    msg = str(err.value)
    for word in ("clip", "noise_multiplier", "mode", "accountant", "delta"):
        assert word in msg
    with pytest.raises(ConfigError, match="local"):
        DPConfig(adaptive=True, mode="local")
    with pytest.raises(ConfigError, match="options are"):
        DPConfig.from_dict({"clip_norm": 1.0})
    with pytest.raises(ConfigError, match="2 x clipped_count_stddev"):
        PrivacyMechanism(DPConfig(adaptive=True, noise_multiplier=1.0), expected_clients=10, num_clients=100)


# --- the dp-fedavg strategy -----------------------------------------------------------------------------------
def test_dp_fedavg_without_noise_is_uniform_fedavg_of_clipped_updates():
    u, ref = make_updates(), make_updates()
    params = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    expected = {n: p.clone() for n, p in params.items()}
    strategy = DPFedAvg(expected_clients=len(u), num_clients=60, dp={"clip": 1.0, "noise_multiplier": 0.0},
                        server_lr=0.5)
    strategy.apply(params, u)
    FixedClip(1.0).clip_(ref)
    FedAvg(weighting="uniform", server_lr=0.5).apply(expected, ref)
    for n in params:
        assert torch.allclose(params[n], expected[n], atol=1e-6)
    assert strategy.epsilon_so_far() == math.inf


def test_dp_fedavg_state_round_trip_gives_the_same_next_round():
    dp = DPConfig(clip=1.0, adaptive=True, noise_multiplier=0.8, clipped_count_stddev=1.0, target_epsilon=50.0)
    a = DPFedAvg(expected_clients=6, num_clients=60, dp=dp)
    pa = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    a.apply(pa, make_updates(seed=1))
    a.apply(pa, make_updates(seed=2))
    b = DPFedAvg(expected_clients=6, num_clients=60, dp=dp)
    b.load_state_dict(a.state_dict())
    pb = {n: p.clone() for n, p in pa.items()}
    assert b.mechanism.clipper.bound == a.mechanism.clipper.bound != 1.0
    a.apply(pa, make_updates(seed=3))
    b.apply(pb, make_updates(seed=3))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert a.epsilon_so_far() == b.epsilon_so_far() == pytest.approx(epsilon(0.8, 60, 6, 3, 1e-5))
    assert "noise_generator" in a.state_dict()["privacy"]  # secure noise resumes bit for bit from the checkpoint
    no_noise_state = {k: v for k, v in b.state_dict()["privacy"].items() if k != "noise_generator"}
    with pytest.raises(ConfigError, match="no DP noise generator state"):  # would silently change the noise
        DPFedAvg(expected_clients=6, num_clients=60, dp=dp).load_state_dict({"privacy": no_noise_state})


def test_dp_fedavg_stops_before_exceeding_target_epsilon():
    dp = DPConfig(clip=1.0, noise_multiplier=2.0, target_epsilon=8.0)
    s = DPFedAvg(expected_clients=6, num_clients=6, dp=dp)  # everyone each round: each round is expensive
    fit = s.mechanism.accountant.rounds_within()
    assert fit == 2
    with pytest.raises(PrivacyBudgetError):
        s.mechanism.check_run(fit + 1)
    params = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    for _ in range(fit):
        s.apply(params, make_updates())
    before = {n: p.clone() for n, p in params.items()}
    with pytest.raises(PrivacyBudgetError):
        s.apply(params, make_updates())
    assert all(torch.equal(params[n], before[n]) for n in params)  # nothing released


def test_dp_fedavg_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="expected_clients"):
        DPFedAvg(expected_clients=0, num_clients=10)
    everyone = DPFedAvg(expected_clients=20, num_clients=10, dp={"noise_multiplier": 1.0})  # all 10 drawn
    assert everyone.mechanism.accountant.event == dpa.GaussianDpEvent(0.5)  # no amplification by sampling


def test_a_private_run_reports_epsilon_every_round_and_refuses_to_overspend(tmp_path):
    from pocketlearn.federated.config import parse_config
    from pocketlearn.federated.experiment import build_server

    raw = {"rounds": 3, "clients_per_round": 10, "data": {"name": "digits", "partition": "iid", "num_clients": 50},
           "strategy": {"name": "dp-fedavg", "options": {"dp": {"clip": 1.0, "noise_multiplier": 1.0}}}}
    server, _ = build_server(parse_config(raw), tmp_path / "ok")
    eps = [r.epsilon for r in server.run(3)]
    assert 0 < eps[0] < eps[1] < eps[2] < float("inf")
    raw["strategy"]["options"]["dp"]["target_epsilon"] = eps[1]
    with pytest.raises(PrivacyBudgetError, match="privacy"):
        build_server(parse_config(raw), tmp_path / "over")


# --- secret noise end to end ----------------------------------------------------------------------------------
def _dp_config(dp, **extra):
    from pocketlearn.federated.config import parse_config

    raw = {"rounds": 4, "clients_per_round": 5, "data": {"name": "digits", "partition": "iid", "num_clients": 20},
           "strategy": {"name": "dp-fedavg", "options": {"dp": {"clip": 1.0, "noise_multiplier": 0.5, **dp}}},
           "eval": {"every": 4}, **extra}
    return parse_config(raw)


def test_a_resumed_private_run_ends_bit_equal_and_the_noise_state_stays_in_the_checkpoint(tmp_path):
    import json
    import shutil

    from pocketlearn.federated.experiment import build_server
    from pocketlearn.federated.report import summarize

    cfg = _dp_config({"adaptive": True, "clipped_count_stddev": 1.0, "noise_multiplier": 0.5})
    first, _ = build_server(cfg, tmp_path / "a")
    first.run(2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the checkpoint after round 2, as a kill would leave it
    records = first.run(4)  # the uninterrupted run
    resumed, _ = build_server(cfg, tmp_path / "b")
    assert resumed.resume() and resumed.round == 2
    resumed.run(4)
    for name in first.params:
        assert torch.equal(first.params[name], resumed.params[name])
    other, _ = build_server(cfg, None)  # the same config from scratch draws other noise
    other.run(4)
    assert not all(torch.equal(first.params[n], other.params[n]) for n in first.params)
    # the generator's state is in state.pt only: not in metrics, summary or anything else in the run folder
    state = torch.load(tmp_path / "a" / "state.pt", weights_only=False)
    assert "noise_generator" in state["strategy"]["privacy"]
    summary = summarize(cfg, first, records, setup_s=0.0, resumed=False)
    assert summary["privacy"]["noise"] == SECURE and summary["privacy"]["epsilon"] == records[-1].epsilon
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["dp_noise"] == SECURE for line in lines)
    for text in [json.dumps(summary), *lines]:
        assert "generator" not in text
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file() and path.name != "state.pt":
            assert b"noise_generator" not in path.read_bytes()


def test_reproducible_noise_is_said_not_private_everywhere_and_refused_for_deployment(tmp_path):
    from pocketlearn.cli.report import privacy_lines
    from pocketlearn.federated.experiment import build_server
    from pocketlearn.federated.flower.serve import ServeOptions, serve
    from pocketlearn.federated.privacy import refuse_for_deployment
    from pocketlearn.federated.report import summarize

    cfg = _dp_config({"reproducible_noise": True, "seed": 3})
    a, _ = build_server(cfg, tmp_path / "run")
    records = a.run(2)
    b, _ = build_server(cfg, None)
    b.run(2)
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)  # repeatable, as asked
    assert [r.dp_noise for r in records] == [NOT_PRIVATE] * 2
    assert summarize(cfg, a, records, setup_s=0.0, resumed=False)["privacy"]["noise"] == NOT_PRIVATE
    assert any(NOT_PRIVATE in line for line in privacy_lines(tmp_path / "run"))
    assert not any(NOT_PRIVATE in line for line in privacy_lines(tmp_path / "run")[:1])  # ε first, then the warning
    with pytest.raises(ConfigError, match="not private"):
        refuse_for_deployment(DPConfig(reproducible_noise=True))
    refuse_for_deployment(DPConfig())  # secure noise deploys
    with pytest.raises(ConfigError, match="reproducible_noise"):
        serve(cfg, tmp_path / "served", ServeOptions(insecure=True))
    assert not (tmp_path / "served").exists()  # refused before anything started


# --- local DP: the devices' noise is theirs -------------------------------------------------------------------
def test_server_side_objects_hold_nothing_that_regenerates_a_clients_local_noise():
    cfg = DPConfig(clip=1.0, noise_multiplier=0.5, mode="local", seed=1)
    mech = PrivacyMechanism(cfg, expected_clients=4, num_clients=50)
    noise = mech.local_noise(rnd=1)
    assert set(noise.to_dict()) == {"clip", "std", "rnd", "unit"}  # what travels: no seed
    assert noise.std == pytest.approx(0.5)
    delta = {"w": torch.zeros(50_000)}
    one, two = noise.apply(3, delta)["w"], noise.apply(3, delta)["w"]
    assert float(one.std()) == pytest.approx(0.5, rel=0.02)
    assert not torch.equal(one, two)  # the same message, the same client: other noise each time
    seeded = derived_generator(cfg.seed, 1, 3)  # what the server could once recompute from (seed, round, client)
    assert not torch.equal(one, torch.randn(50_000, generator=seeded) * 0.5)
    assert LocalNoise.from_dict({**noise.to_dict(), "seed": 7}) == noise  # an old server's seed is ignored
    # the simulation, standing in for the devices, keeps nothing either: same state, same updates, other noise
    state = mech.state_dict()
    assert set(state) == {"rounds", "clip", "accountant", "reports"}
    u1, u2 = pure_noise(4), pure_noise(4)
    out1 = mech.privatize(u1, rnd=1)["big"]
    twin = PrivacyMechanism(cfg, expected_clients=4, num_clients=50)
    twin.load_state_dict(state)
    out2 = twin.privatize(u2, rnd=1)["big"]
    assert not torch.equal(out1, out2)
    assert float(u1.deltas["big"][0].std()) == pytest.approx(0.5, rel=0.02)


# --- accounting follows the sampler ---------------------------------------------------------------------------
def test_epsilon_is_charged_for_fixed_size_sampling_among_the_clients_that_can_train(tmp_path):
    from pocketlearn.federated.experiment import build_server

    profiles = tmp_path / "devices.toml"
    profiles.write_text('[devices.tiny]\nmemory_budget = "75KiB"\n')  # too small to train: never sampled
    cfg = _dp_config({"noise_multiplier": 1.0}, rounds=3, devices={
        "mix": {"tiny": 0.5, "laptop-16g": 0.5}, "profiles": str(profiles), "availability": False},
        client={"fit": "report"})
    server, _ = build_server(cfg, None)
    can_train = [c for c in range(20) if server.clients.method_of(c) is not None]
    assert 5 < len(can_train) < 20
    records = server.run(3)
    sampled = [set(server.sampler.sample(r).tolist()) for r in range(4, 40)]
    assert all(len(s) == 5 and s <= set(can_train) for s in sampled)  # fixed size, only those that can train
    # dp-accounting fed the true scheme: 5 of the len(can_train), without replacement, replace-one (sum moves 2 clip)
    event = dpa.SampledWithoutReplacementDpEvent(len(can_train), 5, dpa.GaussianDpEvent(1.0 / 2))
    truth = replace_one_rdp().compose(event, 3).get_epsilon(1e-5)
    assert records[-1].epsilon == pytest.approx(truth, rel=1e-9)
    naive = dpa.rdp.RdpAccountant().compose(dpa.PoissonSampledDpEvent(5 / 20, dpa.GaussianDpEvent(1.0)), 3)
    assert records[-1].epsilon > naive.get_epsilon(1e-5)  # the old q = 5 / 20 under-charged


def test_with_availability_the_smallest_eligible_count_is_charged():
    from pocketlearn.federated.sampling import ClientSampler

    availability = np.full(40, 0.5)
    sampler = ClientSampler(40, 5, seed=0, availability=availability, availability_seed=1)
    counts = [int(sampler.eligible(r).sum()) for r in range(1, 11)]
    assert sampler.population(10) == min(counts) < 40
    assert ClientSampler(40, 5, seed=0, allowed=np.arange(40) % 4 == 0).population(10) == 10
