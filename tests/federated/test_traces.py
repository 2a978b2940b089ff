import numpy as np
import pytest

from pocketlearn.errors import ConfigError, TrainingError
from pocketlearn.federated.experiment import build_server
from pocketlearn.federated.traces import CsvTrace, DiurnalTrace, speed_factors
from tests.federated.configs import config_with

BASE = {"name": "tr", "rounds": 6, "clients_per_round": 8, "seed": 0,
        "data": {"name": "digits", "partition": "dirichlet", "num_clients": 60, "alpha": 0.5},
        "client": {"lr": 0.05}, "eval": {"every": 6}, "devices": {"mix": {"phone-1g": 0.5, "laptop-16g": 0.5}}}


def test_a_diurnal_client_is_available_for_its_nightly_window_and_the_world_follows_the_sun():
    trace = DiurnalTrace(20_000, seed=1, daytime=0.0)
    hours = np.stack([trace.available(h * 3600.0) for h in range(24)])  # (24, N)
    per_client = hours.sum(0)
    assert (np.abs(per_client - trace._length_h) <= 1.0).mean() > 0.95  # about its window's length, each day
    share = hours.mean(1)
    assert 0.05 < share.min() < share.max() < 0.7 and share.max() / share.min() > 2  # Asia's night, Europe's
    assert np.array_equal(trace.available(5 * 3600.0), DiurnalTrace(20_000, seed=1, daytime=0.0).available(5 * 3600.0))


def _csv(tmp_path, text):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_a_csv_trace_repeats_every_period_and_run_clients_cycle_over_its_clients(tmp_path):
    path = _csv(tmp_path, "client,start_s,end_s\nnight,0,100\nday,100,200\nnight,150,160\n")
    trace = CsvTrace.read(path, num_clients=5, period_s=200)
    assert trace.available(50).tolist() == [True, False, True, False, True]
    assert trace.available(155).tolist() == [True, True, True, True, True]
    assert trace.available(450).tolist() == trace.available(50).tolist()  # period 200


@pytest.mark.parametrize(("text", "match"), [
    ("who,when\n1,2\n", "header"),
    ("client,start_s,end_s\na,10,5\n", "line 2"),
    ("client,start_s,end_s\na,x,5\n", "numbers"),
])
def test_a_bad_csv_trace_names_the_problem(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        CsvTrace.read(_csv(tmp_path, text), num_clients=3, period_s=100)


def test_device_speeds_are_heavy_tailed_around_their_class():
    assert speed_factors(10, 0.0, 0) is None
    speed = speed_factors(200_000, 1.0, 0)
    assert speed.dtype == np.float32 and abs(float(speed.mean()) - 1.0) < 0.02
    assert np.quantile(speed, 0.99) / np.median(speed) > 5  # a heavy right tail


def test_rounds_sample_only_clients_the_trace_has_available_at_their_clock(tmp_path):
    path = _csv(tmp_path, "client,start_s,end_s\nearly,0,0.02\nlate,0.02,0.04\n")
    server, _ = build_server(config_with(BASE, devices={**BASE["devices"], "trace": str(path),
                                                        "trace_period_s": 0.04}), None)
    seen = []
    original = server.sampler.sample
    server.sampler.sample = lambda rnd, at_s, *more: seen.append((at_s, original(rnd, at_s, *more))) or seen[-1][1]
    server.run(6)
    assert len({round(at % 0.04 // 0.02) for at, _ in seen}) == 2  # rounds started in both halves of the period
    for at, ids in seen:
        assert server.sampler.trace.available(at)[ids].all() and len(ids) == 8


def test_an_overselected_round_closes_at_its_goal_and_counts_the_rest():
    config = config_with(BASE, devices={**BASE["devices"], "overselect": 0.5, "spread": 1.0, "availability": False})
    server, _ = build_server(config, None)
    records = server.run(3)
    assert all(r.sampled == 12 and r.finished == 8 and r.surplus == 4 and r.stragglers == 0 for r in records)
    plain, _ = build_server(config_with(BASE, devices={**BASE["devices"], "spread": 1.0, "availability": False}),
                            None)
    assert plain.run(1)[0].surplus == 0


def test_a_private_run_cannot_follow_a_trace(tmp_path):
    path = _csv(tmp_path, "client,start_s,end_s\na,0,10\n")
    config = config_with(BASE, devices={**BASE["devices"], "trace": str(path)},
                         strategy={"name": "dp-fedavg", "options": {"dp": {"clip": 1.0, "noise_multiplier": 1.0}}})
    with pytest.raises(ConfigError, match="devices.trace"):
        build_server(config, None)


def test_fedbuff_follows_the_trace_too():
    config = config_with(BASE, devices={**BASE["devices"], "trace": "diurnal"}, asynchronous={"buffer": 4})
    server, _ = build_server(config, None)
    records = server.run(3)
    assert [r.finished for r in records] == [4, 4, 4]



@pytest.mark.parametrize("extra", [{}, {"asynchronous": {"buffer": 4}}], ids=["rounds", "fedbuff"])
def test_when_nobody_is_available_the_clock_waits_for_the_next_window(tmp_path, extra):
    path = _csv(tmp_path, "client,start_s,end_s\na,100,200\n")
    config = config_with(BASE, devices={**BASE["devices"], "trace": str(path), "trace_period_s": 200}, **extra)
    server, _ = build_server(config, None)
    record = server.run(1)[0]
    assert record.finished > 0 and record.clock_s >= 120  # waited a minute at a time from 0 until 120
    quiet = _csv(tmp_path, "client,start_s,end_s\na,10,11\n")  # a second a day: no minute ever lands in it
    stuck, _ = build_server(config_with(BASE, devices={**BASE["devices"], "trace": str(quiet)}, **extra), None)
    with pytest.raises(TrainingError, match="no client is available"):
        stuck.run(1)
