"""One answer on every engine: a run on Ray ends where the in-process run ends, feature by feature.

Each case runs two rounds of a small digits run twice, in process and on Ray (a local Ray with two workers, so
a round's clients are split across actors), and compares the final weights bit for bit and every field of
every round's record but its wall time: losses, accuracy, bytes up and down (per method), ε.
"""

import dataclasses
import importlib.util
import os

import pytest
import torch

from pocketlearn.federated.experiment import build_server, load_federated_data
from pocketlearn.federated.privacy.config import DPConfig
from pocketlearn.federated.simulate import torch_threads
from tests.federated.configs import config_with

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
ray = pytest.importorskip("ray")

BASE = {"name": "parity", "rounds": 2, "clients_per_round": 6, "checkpoint": False,
        "data": {"name": "digits", "partition": "iid", "num_clients": 12, "limit": 600, "test_limit": 200},
        "model": {"name": "digits-mlp"}, "devices": {"availability": False}, "client": {"lr": 0.1}}
PINS = {"laptop-16g": "backprop", "phone-4g": "lora", "phone-1g": "mezo"}
MIXED = {"devices__mix": {"laptop-16g": 0.3, "phone-4g": 0.4, "phone-1g": 0.3}, "client__methods": PINS,
         "client__per_method": {"mezo": {"lr": 0.003}, "lora": {"rank": 4}}}
# seeded noise, so that two runs can be compared (the research option, where the config has it)
_SEEDED = {"reproducible_noise": True} if "reproducible_noise" in {f.name for f in dataclasses.fields(DPConfig)} \
    else {}
DP_CENTRAL = {"name": "dp-fedavg", "options": {"dp": {"clip": 0.5, "noise_multiplier": 0.3, "seed": 7, **_SEEDED}}}
DP_LOCAL = {"name": "dp-fedavg", "options": {"dp": {"mode": "local", "clip": 0.5, "noise_multiplier": 0.05,
                                                    "seed": 7, **_SEEDED}}}

DENSE = 4 * (64 * 128 + 128 + 128 * 10 + 10)  # one digits-mlp update in float32 (bytes, headers aside)
# auto: the planner gives each class the best method its memory allows (lora, bias; the watch cannot train)
AUTO_DEVICES = {"big": "1GiB", "mid": "90KiB", "small": "70KiB", "watch": "40KiB"}


def _methods(records):
    return set().union(*(r["by_method"] for r in records))


# name -> (config changes, what shows that the records carry the feature)
FEATURES = {
    "seed-exchange": ({"client__method": "mezo", "client__lr": 0.003, "codec__up": "seeds"},
                      lambda rs: all(r["bytes_up"] < r["finished"] * DENSE / 100 for r in rs)),
    "mixed-pinned": (MIXED, lambda rs: _methods(rs) == {"backprop", "lora", "mezo"}),
    "topk-error-feedback": ({"codec__up": "topk0.05"}, lambda rs: all(r["bytes_up"] < r["finished"] * DENSE / 4
                                                                        for r in rs)),
    "plain": ({}, lambda rs: all(r["finished"] == 6 for r in rs)),
    "mixed-auto": ({**MIXED, "client__methods": {}, "client__method": "auto", "devices__profiles": "PROFILES",
                    "devices__mix": dict.fromkeys(AUTO_DEVICES, 0.25)},
                   lambda rs: _methods(rs) == {"backprop", "lora", "bias"}),
    "secagg": ({"secagg__enabled": True, "secagg__clip": 2.0},
               lambda rs: all(r["bytes_up"] > sum(r["bytes_by_method"].values()) for r in rs)),  # protocol bytes
    "secagg-mixed": ({**MIXED, "secagg__enabled": True, "secagg__clip": 2.0},
                     lambda rs: all(r["bytes_up"] > sum(r["bytes_by_method"].values()) for r in rs)),
    "dp-central": ({"strategy": DP_CENTRAL}, lambda rs: all(r["epsilon"] > 0 for r in rs)),
    "dp-local": ({"strategy": DP_LOCAL}, lambda rs: all(r["epsilon"] > 0 for r in rs)),
    "dp-mixed": ({**MIXED, "strategy": DP_CENTRAL}, lambda rs: all(r["epsilon"] > 0 for r in rs)),
    "dp-secagg": ({"strategy": DP_CENTRAL, "secagg__enabled": True, "secagg__clip": 2.0},  # distributed DP
                  lambda rs: all(r["epsilon"] > 0 and r["bytes_up"] > sum(r["bytes_by_method"].values())
                                 for r in rs)),
    "sign-error-feedback": ({"codec__up": "sign"}, lambda rs: all(r["bytes_up"] < r["finished"] * DENSE / 16
                                                                  for r in rs)),
    "seeds-q8-down": ({"client__method": "mezo", "client__lr": 0.003, "codec__up": "seeds", "codec__down": "q8"},
                      lambda rs: all(r["bytes_down"] < r["sampled"] * DENSE / 3 for r in rs)),
    # (the 600-sample digits slice trains quickly: a deadline of 0.03 simulated s still leaves phones behind)
    "dropout-deadline": ({"devices__dropout": 0.3, "devices__deadline_s": 0.03,
                          "devices__mix": {"laptop-16g": 0.5, "phone-1g": 0.5}},
                         lambda rs: sum(r["dropped"] for r in rs) > 0 and sum(r["stragglers"] for r in rs) > 0),
}


@pytest.fixture(scope="module")
def ray_engine():
    """One local Ray and one Ray engine (two actors) for the whole matrix: every case shares data and model."""
    from pocketlearn.federated.experiment import build_template
    from pocketlearn.federated.ray_engine import RayEngine

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    config = config_with(BASE)
    data = load_federated_data(config)
    engine = RayEngine(build_template(config), data.clients, num_workers=2)
    yield engine
    engine.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    path = tmp_path_factory.mktemp("devices") / "devices.toml"
    path.write_text("".join(f'[devices.{name}]\nmemory_budget = "{budget}"\n' for name, budget in AUTO_DEVICES.items()))
    return str(path)


def _run(config, engine=None):
    server, _ = build_server(config, None, engine=engine)
    # Ray's workers train on one intra-op thread each; on some CPUs (AMD EPYC) a matmul's float summation
    # order depends on the thread count, so the in-process run uses one thread as well
    with torch_threads(1 if engine is None else None):
        records = server.run(config.rounds)
    return server.params, [{k: v for k, v in r.__dict__.items() if k != "round_time_s"} for r in records]


@pytest.mark.parametrize("feature", list(FEATURES))
def test_ray_gives_the_in_process_run(ray_engine, profiles, feature):
    changes, carries_it = FEATURES[feature]
    if feature == "dp-secagg" and importlib.util.find_spec("pocketlearn.federated.privacy.distributed") is None:
        pytest.skip("distributed DP (dp-fedavg with secagg) is not in this tree yet")
    changes = {k: profiles if v == "PROFILES" else v for k, v in changes.items()}
    config = config_with(BASE, **changes)
    here_params, here = _run(config)
    there_params, there = _run(config, ray_engine)
    assert carries_it(here), here  # the runs exercise the feature
    assert there == here
    for name, p in here_params.items():
        assert torch.equal(there_params[name], p), name
