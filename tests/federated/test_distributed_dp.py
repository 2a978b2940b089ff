"""Distributed DP: DP-FedAvg together with secure aggregation, the clients adding the noise before masking."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocketlearn.cli.main import app
from pocketlearn.errors import ConfigError
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.flower import secure
from pocketlearn.federated.metrics import read_metrics
from pocketlearn.federated.privacy.config import DPConfig
from pocketlearn.federated.privacy.distributed import DistributedDP, NoiseShare
from pocketlearn.federated.privacy.mechanism import PrivacyMechanism
from pocketlearn.federated.secagg import FieldSpec
from pocketlearn.federated.updates import RoundUpdates
from tests.federated.flower_local import config, deploy_in_process

DP = {"name": "dp-fedavg", "options": {"dp": {"clip": 0.5, "noise_multiplier": 0.8}}}
SECAGG = {"enabled": True, "threshold": 0.6}
CLIP, Z, N, D = 1.0, 1.0, 5, 20_000  # five clients, threshold 0.6: t = 3


def _mechanism(**dp) -> PrivacyMechanism:
    return PrivacyMechanism(DPConfig(clip=CLIP, noise_multiplier=Z, **dp), expected_clients=N, num_clients=50)


def _updates(seed: int = 0) -> RoundUpdates:
    """Five clients' updates of D values, some above the clip bound (norm 3) and some below (norm 0.5)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(N, D, generator=g)
    rows = rows / rows.norm(dim=1, keepdim=True) * torch.tensor([3.0, 0.5, 3.0, 0.5, 3.0]).view(-1, 1)
    return RoundUpdates(list(range(N)), torch.full((N,), 10.0), {"w": rows.view(N, 100, 200)})


def _clipped_sum(u: RoundUpdates, keep=range(N)) -> torch.Tensor:
    rows = u.deltas["w"].flatten(1).double()
    rows = rows * (CLIP / rows.norm(dim=1, keepdim=True)).clamp(max=1.0)
    return rows[list(keep)].sum(0)


def _noise_std(mechanism: PrivacyMechanism, drop=frozenset()) -> tuple[float, NoiseShare]:
    sums = DistributedDP(mechanism).secure_sum(_updates(), threshold=0.6, neighbours=None, seed=1,
                                               drop_after_masking=drop)
    error = sums["w"].reshape(-1).double() - _clipped_sum(_updates(), [k for k in range(N) if k not in drop])
    return float(error.std()), DistributedDP(mechanism).plan(N, 0.6, D)


def test_the_unmasked_sum_carries_the_noise_of_every_client_share():
    """No dropout: the server's sum is the clipped sum plus noise z·C·sqrt(n/t) (never un-noised)."""
    std, plan = _noise_std(_mechanism())
    assert plan.threshold == 3
    inflation = plan.sensitivity / (CLIP * plan.scale)  # the rounding's share of the sensitivity, ~1 + 1e-6
    assert 1 < inflation < 1.001
    assert std == pytest.approx(Z * CLIP * math.sqrt(N / 3) * inflation, rel=0.03)


def test_the_worst_allowed_dropout_still_leaves_the_central_noise():
    """m = t = 3 survivors: the noise left is z·C, the level the accountant is charged for."""
    std, _ = _noise_std(_mechanism(), drop=frozenset({1, 4}))
    assert std == pytest.approx(Z * CLIP, rel=0.03)
    assert std >= Z * CLIP * 0.97


def test_the_noise_comes_from_the_os_unless_reproducible_noise_is_on():
    def noisy_sum(**dp):
        return DistributedDP(_mechanism(**dp)).secure_sum(_updates(), threshold=0.6, neighbours=None, seed=1)["w"]

    assert not torch.equal(noisy_sum(), noisy_sum())  # same config, same updates, other noise
    assert torch.equal(noisy_sum(reproducible_noise=True, seed=3), noisy_sum(reproducible_noise=True, seed=3))


def test_a_share_is_whole_ring_units_that_the_protocols_quantizer_recovers_exactly():
    plan = NoiseShare(CLIP, Z, N, 3, D)
    field = plan.field()
    sent = plan.apply(np.full(D, 10.0), torch.Generator().manual_seed(0))  # norm 1414: clipped to 1 first
    q = field.quantize(sent).view(np.int32).astype(np.float64)
    assert np.array_equal(q, np.rint(sent * plan.scale))
    assert np.abs(q).max() < field.levels / 2  # value + noise nowhere near the ring's edge
    assert isinstance(field, FieldSpec) and field.clip == pytest.approx(plan.field_range)
    with pytest.raises(ConfigError, match="below"):
        NoiseShare(CLIP, 1e-9, N, 3, D)  # a share of a fraction of a ring unit is no Gaussian


def test_fed_simulate_runs_dp_with_secagg_and_reports_centrals_epsilon(tmp_path):
    """Refused before: now it runs, over the protocol, and spends exactly what central DP-FedAvg spends."""
    data = {"name": "digits", "partition": "iid", "num_clients": 10}  # half the clients sampled per round
    distributed, _ = build_server(config(strategy=DP, secagg=SECAGG, data=data, rounds=2), None)
    central, _ = build_server(config(strategy=DP, data=data, rounds=2), None)
    records, reference = distributed.run(2), central.run(2)
    assert [r.epsilon for r in records] == [r.epsilon for r in reference] and records[-1].epsilon > 0
    assert records[0].bytes_up != reference[0].bytes_up  # the protocol's messages, not plain payloads

    toml = tmp_path / "run.toml"
    toml.write_text('name = "ddp"\nrounds = 2\nclients_per_round = 5\n[model]\nname = "digits-mlp"\n'
                    '[data]\nname = "digits"\npartition = "iid"\nnum_clients = 10\n[devices]\navailability = false\n'
                    '[strategy]\nname = "dp-fedavg"\n[strategy.options.dp]\nclip = 0.5\nnoise_multiplier = 0.8\n'
                    '[secagg]\nenabled = true\nthreshold = 0.6\n')
    result = CliRunner().invoke(app, ["fed", "simulate", str(toml), "--runs", str(tmp_path / "runs"), "--quiet",
                                      "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    metrics = read_metrics(tmp_path / "runs" / "ddp" / "metrics.jsonl")
    assert [r["epsilon"] for r in metrics] == [r.epsilon for r in reference]
    assert json.loads((tmp_path / "s.json").read_text())["rounds"] == 2


@pytest.mark.parametrize("dp, sections, match", [
    ({"adaptive": True}, {}, "adaptive.*its own secure sum"),
    ({"mode": "local"}, {}, "mode = 'central'"),
    ({}, {"client": {"method": "auto"}}, "mixed-method"),
], ids=["adaptive", "local", "mixed"])
def test_what_distributed_dp_cannot_do_is_refused_by_name(dp, sections, match):
    strategy = {"name": "dp-fedavg", "options": {"dp": {"clip": 0.5, **dp}}}
    with pytest.raises(ConfigError, match=match):  # refused as the config is read, before anything is built
        config(strategy=strategy, secagg=SECAGG, **sections)


def test_devices_over_flower_add_their_shares_and_the_run_reports_epsilon(tmp_path, monkeypatch):
    """Each device clips and noises before masking; the server's sum differs from the clipped one by the noise."""
    seen, sums = [], []
    device_step, secure_run = secure._noised, secure.SecureSum.run

    def spy_device(spec, vector):  # the device's own input and output (in this process, for the test only)
        out = device_step(spec, vector)
        seen.append((spec, np.array(vector, np.float64), out))
        return out

    def spy_server(self):
        result = secure_run(self)
        sums.append(np.concatenate([s.reshape(-1) for _, s in sorted(result[0].items())]))
        return result

    monkeypatch.setattr(secure, "_noised", spy_device)
    monkeypatch.setattr(secure.SecureSum, "run", spy_server)
    strategy = {"name": "dp-fedavg", "options": {"dp": {"clip": 0.5, "noise_multiplier": 1.0}}}
    deploy_in_process(config(strategy=strategy, secagg=SECAGG, rounds=2), tmp_path)
    central, _ = build_server(config(strategy=strategy, rounds=2), None)
    assert [r["epsilon"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == \
        [r.epsilon for r in central.run(2)]
    assert len(seen) == 10 and len(sums) == 2  # five devices noised in each of two rounds
    plan = NoiseShare.from_dict(seen[0][0].dp)
    assert (plan.num_clients, plan.threshold, plan.clip) == (5, 3, 0.5)
    clipped = sum(x * min(1.0, 0.5 / np.linalg.norm(x)) for _, x, _ in seen[:5])
    error = sums[0] - clipped
    assert error.std() == pytest.approx(plan.sum_std(5), rel=0.08)  # ~ z·C·sqrt(5/3)
    assert error.std() == pytest.approx(0.5 * math.sqrt(5 / 3), rel=0.08)
