"""Mixed methods, local DP and error feedback over Flower (in process): the deployment ends where the simulator ends.

Each test deploys a config on a ``LocalGrid`` (Flower messages routed to the ClientApp in this process, one node
per client) and checks the final weights and the bytes of every round against ``fed simulate`` of the same config.
"""

import shutil

import pytest
import torch

from pocketlearn.errors import ConfigError
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower.deploy import check_deployable
from pocketlearn.federated.metrics import read_metrics
from tests.federated.flower_local import assert_same_params, config, deploy_in_process

PINS = {"laptop-16g": "backprop", "phone-4g": "lora", "phone-1g": "mezo"}
MIXED = {"method": "backprop", "methods": PINS, "lr": 0.1,
         "per_method": {"mezo": {"lr": 0.003}, "lora": {"rank": 4}}}
MIX = {"mix": {"laptop-16g": 0.3, "phone-4g": 0.4, "phone-1g": 0.3}, "availability": False, "seed": 3}
LOCAL_DP = {"name": "dp-fedavg", "options": {"dp": {"mode": "local", "clip": 0.5, "noise_multiplier": 0.05}}}
# central noise drawn from the seed, so that the deployed run can equal the simulation (`fed serve` refuses this)
SEEDED_CENTRAL_DP = {"name": "dp-fedavg", "options": {"dp": {"clip": 0.5, "reproducible_noise": True}}}


def _simulate(cfg):
    server, _ = build_server(cfg, None)
    return server, server.run(cfg.rounds)


def _presets(server):
    """Each client's device preset as the simulator assigned it (devices join with their own)."""
    clients = server.clients
    return [clients.fits[int(clients.device_index[c])].device.name for c in range(len(clients.sizes))]


def _deployed_params(run_dir):
    return torch.load(run_dir / "state.pt")["params"]


def _assert_same_run(run_dir, server, simulated, atol=1e-6):
    assert_same_params(_deployed_params(run_dir), server.params, atol=atol)
    deployed = read_metrics(run_dir / "metrics.jsonl")
    assert [r["bytes_up"] for r in deployed] == [r.bytes_up for r in simulated]
    assert [r["bytes_down"] for r in deployed] == [r.bytes_down for r in simulated]
    return deployed


def _assert_same_run_up_to_the_devices_noise(cfg, run_dir, server, simulated):
    """Local DP: each device draws its own noise, which no simulation can repeat; all else is the same.

    The deployed weights differ from the simulator's exactly as much as a second simulation's do (noise of the
    same size, drawn independently): not noised on the device would give less, noised twice more.
    """
    deployed = read_metrics(run_dir / "metrics.jsonl")
    assert [r["bytes_up"] for r in deployed] == [r.bytes_up for r in simulated]
    assert [r["bytes_down"] for r in deployed] == [r.bytes_down for r in simulated]
    assert [r["epsilon"] for r in deployed] == [r.epsilon for r in simulated]
    again, _ = _simulate(cfg)
    params = _deployed_params(run_dir)
    name = max(params, key=lambda n: params[n].numel())
    apart = float((params[name] - server.params[name]).std())
    assert 0.85 < apart / float((again.params[name] - server.params[name]).std()) < 1.15
    return deployed


@pytest.mark.parametrize("sections", [{}, {"codec": {"up": "q8"}}, {"codec": {"up": "topk0.1"}},
                                      {"strategy": SEEDED_CENTRAL_DP}],
                         ids=["float32", "q8", "topk-error-feedback", "central-dp"])
def test_mixed_methods_over_flower_match_the_simulator(tmp_path, sections):
    cfg = config(client=MIXED, devices=MIX, **sections)
    server, simulated = _simulate(cfg)
    methods = set().union(*(r.by_method for r in simulated))
    assert methods == {"backprop", "lora", "mezo"}  # every kind of wire form travels
    summary, run_dir = deploy_in_process(cfg, tmp_path, devices=_presets(server))
    deployed = _assert_same_run(run_dir, server, simulated)
    assert [r["by_method"] for r in deployed] == [r.by_method for r in simulated]
    assert sum(summary["traffic"]["bytes_up"].values()) == summary["bytes_up"]
    assert deployed[-1]["finished"] == cfg.clients_per_round


def test_a_mixed_device_sends_its_wire_form_not_the_model(tmp_path):
    cfg = config(client=MIXED, devices=MIX, rounds=1)
    server, simulated = _simulate(cfg)
    summary, _ = deploy_in_process(cfg, tmp_path, devices=_presets(server))
    up = {int(c): b for c, b in summary["traffic"]["bytes_up"].items()}
    method = {c: server.clients.method_of(c) for c in up}
    by_method = {m: {b for c, b in up.items() if method[c] == m} for m in set(method.values())}
    assert max(by_method["mezo"]) < 1024  # 64 coefficients of the round's seed pool
    assert max(by_method["lora"]) < min(by_method["backprop"]) / 4  # B factors only


def test_a_mixed_round_goes_on_when_every_device_of_a_method_is_silent(tmp_path):
    cfg = config(client=MIXED, devices=MIX, rounds=2)
    server, _ = _simulate(cfg)
    presets = _presets(server)
    silent = [c for c, preset in enumerate(presets) if PINS[preset] == "lora"]
    assert 0 < len(silent) < len(presets)
    _, run_dir = deploy_in_process(cfg, tmp_path, dead=silent, round_timeout_s=0.5, devices=presets)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["finished"] for r in records] == [len(presets) - len(silent)] * 2
    assert [r["stragglers"] for r in records] == [len(silent)] * 2


def test_local_dp_over_flower_noises_on_the_devices_as_much_as_the_simulator(tmp_path):
    cfg = config(strategy=LOCAL_DP)
    server, simulated = _simulate(cfg)
    _, run_dir = deploy_in_process(cfg, tmp_path)
    deployed = _assert_same_run_up_to_the_devices_noise(cfg, run_dir, server, simulated)
    assert deployed[-1]["epsilon"] > 0


def test_local_dp_reports_leave_the_device_clipped_and_noised(tmp_path, monkeypatch):
    """What the engine decodes is the device's noisy report: clipping alone would keep norms within the bound."""
    from pocketlearn.federated.flower import engine as flower_engine

    seen = []
    original = flower_engine.FlowerEngine._round_result

    def spy(self, *args):
        result = original(self, *args)
        seen.append(result.updates.client_norms())
        return result

    monkeypatch.setattr(flower_engine.FlowerEngine, "_round_result", spy)
    cfg = config(strategy={"name": "dp-fedavg", "options": {"dp": {"mode": "local", "clip": 0.5,
                                                                    "noise_multiplier": 1.0}}}, rounds=1)
    deploy_in_process(cfg, tmp_path)
    norms = torch.cat(seen)
    assert len(norms) == 5 and bool((norms > 0.5 * 10).all())  # N(0, 0.5²) on 9,610 coordinates: norm ~ 0.5·√n = 49


def test_mixed_methods_with_local_dp_over_flower_noise_as_much_as_the_simulator(tmp_path):
    dp = {"name": "dp-fedavg", "options": {"dp": {**LOCAL_DP["options"]["dp"], "kind_scale": {"zo": 4.0}}}}
    cfg = config(client=MIXED, devices=MIX, strategy=dp, rounds=2)
    server, simulated = _simulate(cfg)
    _, run_dir = deploy_in_process(cfg, tmp_path, devices=_presets(server))
    _assert_same_run_up_to_the_devices_noise(cfg, run_dir, server, simulated)


@pytest.mark.parametrize("up", ["topk0.1", "sign"])
def test_error_feedback_over_flower_keeps_residuals_on_the_devices(tmp_path, up):
    cfg = config(codec={"up": up, "error_feedback": True})
    server, simulated = _simulate(cfg)
    _, run_dir = deploy_in_process(cfg, tmp_path)
    _assert_same_run(run_dir, server, simulated)
    files = sorted((tmp_path / "data").glob("*.feedback/*.pt"))
    assert len(files) == 5  # one residual file per device, next to its examples
    kept = torch.load(files[0])["residuals"]
    assert sorted(kept) == [2, 3]  # the two latest rounds


def test_error_feedback_without_the_device_files_drifts_from_the_simulator(tmp_path):
    """The residuals matter: a deployment that loses them between rounds does not end on the simulator's weights."""
    cfg = config(codec={"up": "topk0.1"}, rounds=1)
    deploy_in_process(cfg, tmp_path)
    for folder in (tmp_path / "data").glob("*.feedback"):
        shutil.rmtree(folder)
    cfg = config(codec={"up": "topk0.1"}, rounds=2)
    server, _ = _simulate(cfg)
    _, run_dir = deploy_in_process(cfg, tmp_path)
    with pytest.raises(AssertionError):
        assert_same_params(_deployed_params(run_dir), server.params, atol=1e-6)


def test_a_round_retried_after_a_server_crash_uses_the_residual_from_before_it(tmp_path):
    """Round 2's devices answered, the server died before its checkpoint: round 2 runs again from round 1's state."""
    ef = {"up": "topk0.1", "error_feedback": True}
    deploy_in_process(config(codec=ef, rounds=1), tmp_path)
    after_round_1 = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    deploy_in_process(config(codec=ef, rounds=2), tmp_path)  # the lost round: devices store round 2's residual
    for name, data in after_round_1.items():  # the crash: the server's files are those of round 1
        (tmp_path / "run" / name).write_bytes(data)
    cfg = config(codec=ef, rounds=3)
    server, simulated = _simulate(cfg)
    _, run_dir = deploy_in_process(cfg, tmp_path)
    assert [r["round"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]
    _assert_same_run(run_dir, server, simulated)


def test_a_fresh_run_never_reads_an_earlier_runs_residuals(tmp_path):
    """A residual file belongs to one server run (its id is in the checkpoint); starting over replaces it."""
    cfg = config(codec={"up": "topk0.1", "error_feedback": True}, rounds=2)
    deploy_in_process(cfg, tmp_path)
    shutil.rmtree(tmp_path / "run")  # what --fresh does to the run folder
    server, simulated = _simulate(cfg)
    _, run_dir = deploy_in_process(cfg, tmp_path)
    _assert_same_run(run_dir, server, simulated)
    run_id = torch.load(run_dir / "state.pt")["run_id"]
    for folder in (tmp_path / "data").glob("*.feedback"):
        assert [f.name.split("-")[-1] for f in folder.iterdir()] == [f"{run_id}.pt"]


@pytest.mark.parametrize("mix", [MIX, {**MIX, "mix": {"laptop-16g": 0.2, "phone-4g": 0.6, "phone-1g": 0.2}}],
                         ids=["three-groups", "a-lone-device-joins-another-group"])
def test_secure_aggregation_of_mixed_methods_over_flower_matches_the_simulator(tmp_path, mix):
    """One protocol per method among the devices themselves; a method's lone device masks inside another group."""
    cfg = config(client=MIXED, devices=mix, secagg={"enabled": True, "clip": 0.5, "threshold": 0.6}, rounds=2)
    server, simulated = _simulate(cfg)
    counts = [r.by_method for r in simulated]
    assert all(len(c) == 3 for c in counts)
    if mix is not MIX:
        assert any(min(c.values()) == 1 for c in counts)  # the case that merges groups happens
    _, run_dir = deploy_in_process(cfg, tmp_path, devices=_presets(server))
    _assert_same_run(run_dir, server, simulated)


def test_local_dp_with_seed_exchange_is_refused_over_flower():
    """A device can noise an update, not MeZO's seeds: the server would replay them un-noised."""
    cfg = config(client={"method": "mezo", "lr": 1e-3, "options": {"eps": 1e-3}}, codec={"up": "seeds"},
                 strategy=LOCAL_DP)
    with pytest.raises(ConfigError, match="seeds"):
        check_deployable(cfg)
