import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from pocketlearn.data.partition import (
    Partition,
    dirichlet,
    iid,
    lognormal_sizes,
    make_partition,
    natural,
    partition_stats,
    quantity_skew,
    save_stats,
    stats_table,
)
from pocketlearn.errors import ConfigError, DataError

LABELS = np.random.default_rng(0).integers(0, 10, 2000)


def _covers_once(part, n):
    assert sorted(np.concatenate(part.indices).tolist()) == list(range(n))
    assert all(i.dtype == np.int64 and len(i) >= 1 and np.all(np.diff(i) > 0) for i in part.indices)


@pytest.mark.parametrize("make", [
    lambda: iid(2000, 37, seed=1),
    lambda: dirichlet(LABELS, 50, 0.3, seed=1),
    lambda: quantity_skew(2000, 50, 0.5, seed=1),
    lambda: make_partition("natural", LABELS, 0, user_ids=LABELS % 7),
])
def test_every_sample_goes_to_exactly_one_client(make):
    _covers_once(make(), 2000)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), data=st.data(), alpha=st.floats(0.01, 10), seed=st.integers(0, 2**16))
def test_any_small_split_gives_every_client_a_sample(n, data, alpha, seed):
    k = data.draw(st.integers(1, n))
    labels = np.random.default_rng(seed).integers(0, 4, n)
    for part in (iid(n, k, seed), dirichlet(labels, k, alpha, seed), quantity_skew(n, k, alpha, seed)):
        assert len(part) == k
        _covers_once(part, n)


def test_iid_sizes_differ_by_at_most_one():
    sizes = iid(2000, 37, seed=0).sizes
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 2000


def test_label_skew_grows_as_alpha_falls():
    stats = [partition_stats(dirichlet(LABELS, 40, a, seed=0), LABELS) for a in (100, 1, 0.1)]
    skew = [s["label_skew_tv"] for s in stats]
    assert skew[0] < skew[1] < skew[2]
    assert stats[0]["classes_per_client"] > stats[2]["classes_per_client"]
    assert partition_stats(iid(2000, 40), LABELS)["label_skew_tv"] < skew[1]


def test_quantity_skew_makes_unequal_sizes_with_iid_labels():
    stats = partition_stats(quantity_skew(2000, 40, 0.3, seed=0), LABELS)
    assert stats["max"] > 5 * stats["median"] and stats["min"] >= 1
    spread = [partition_stats(quantity_skew(2000, 40, a, seed=0))["max"] for a in (100, 0.1)]
    assert spread[0] < spread[1]


def test_lognormal_sizes_are_heavy_tailed_with_iid_labels():
    part = lognormal_sizes(2000, 40, 1.5, seed=0)
    _covers_once(part, 2000)
    stats = partition_stats(part, LABELS)
    assert stats["max"] > 8 * stats["median"] and stats["min"] >= 1
    assert make_partition("lognormal", LABELS, 40, sigma=1.5).indices[3].tolist() == part.indices[3].tolist()
    assert partition_stats(lognormal_sizes(2000, 40, 0.1))["max"] < 2 * stats["median"] + 60  # small sigma: even
    with pytest.raises(ConfigError, match="sigma must be positive"):
        lognormal_sizes(2000, 40, 0.0)


def test_lognormal_equals_the_benchmarks_anchor_workload(monkeypatch):
    """benchmarks/anchor_workloads/workload.py draws the same split for the anchors (which lack pocketlearn)."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "anchor_workloads" / "workload.py"
    shared = types.ModuleType("shared_workload")  # the names the module takes from the shared anchors
    shared.dirichlet_partition = dirichlet
    monkeypatch.setitem(sys.modules, "shared_workload", shared)
    spec = importlib.util.spec_from_file_location("cnn_workload", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    theirs = module.lognormal_partition(5000, 100, 1.5, 0)
    ours = lognormal_sizes(5000, 100, 1.5, seed=0).indices
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("num_clients", [100, 1000])
def test_dirichlet_equals_the_anchor_partition(workload, num_clients):
    labels = workload.load_data()[1]
    ours = dirichlet(labels, num_clients, 0.5, seed=0).indices
    theirs = workload.dirichlet_partition(labels, num_clients, 0.5, 0)
    assert len(ours) == len(theirs) == num_clients
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_natural_split_is_one_client_per_user():
    part = natural(["bob", "ann", "bob", "cy", "ann"])
    assert part.names == ["bob", "ann", "cy"]
    assert [i.tolist() for i in part.indices] == [[0, 2], [1, 4], [3]]


def test_stats_are_counted_right(tmp_path):
    part = Partition([np.array([0, 1]), np.array([2, 3, 4])])
    stats = partition_stats(part, np.array([0, 0, 1, 1, 0]))
    assert stats == pytest.approx({"clients": 2, "samples": 5, "min": 2, "median": 2.5, "mean": 2.5, "max": 3,
                                   "classes_per_client": 1.5, "label_skew_tv": (0.4 + 4 / 15) / 2})
    save_stats(stats, tmp_path / "run" / "partition.json")
    assert json.loads((tmp_path / "run" / "partition.json").read_text()) == stats
    console = Console(record=True, width=100)
    console.print(stats_table(stats, "partition: dirichlet of digits"))
    text = console.export_text()
    assert "samples per client, median" in text and "2.500" in text and "label skew" in text


def test_bad_requests_name_the_problem():
    with pytest.raises(ConfigError, match="only 5 samples"):
        iid(5, 6)
    with pytest.raises(ConfigError, match="alpha must be positive, got 0"):
        dirichlet(LABELS, 3, 0.0)
    with pytest.raises(ConfigError, match=r"unknown partition 'zipf'; choose one of \['iid', 'dirichlet'"):
        make_partition("zipf", LABELS, 3)
    with pytest.raises(ConfigError, match="needs a data set with users"):
        make_partition("natural", LABELS, 3)
    with pytest.raises(DataError, match="one user id per sample"):
        natural([])
