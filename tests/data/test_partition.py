from pathlib import Path

import numpy as np
import pytest

from pocketlearn.data.partition import dirichlet, iid, make_partition, natural, partition_stats, quantity_skew
from pocketlearn.errors import ConfigError

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"
LABELS = np.random.default_rng(0).integers(0, 10, 2000)


def _covers_once(part, n):
    allidx = np.concatenate(part.indices)
    assert sorted(allidx.tolist()) == list(range(n))
    assert all(len(i) >= 1 and np.all(np.diff(i) > 0) for i in part.indices)


@pytest.mark.parametrize("make", [
    lambda: iid(2000, 37, seed=1),
    lambda: dirichlet(LABELS, 50, 0.3, seed=1),
    lambda: quantity_skew(2000, 50, 0.5, seed=1),
])
def test_every_sample_goes_to_exactly_one_client(make):
    part = make()
    _covers_once(part, 2000)


def test_label_skew_grows_as_alpha_falls():
    skew = [partition_stats(dirichlet(LABELS, 40, a, seed=0), LABELS)["label_skew_tv"] for a in (100, 1, 0.1)]
    assert skew[0] < skew[1] < skew[2]
    assert partition_stats(iid(2000, 40), LABELS)["label_skew_tv"] < skew[1]


def test_quantity_skew_makes_unequal_sizes_with_iid_labels():
    stats = partition_stats(quantity_skew(2000, 40, 0.3, seed=0), LABELS)
    assert stats["max"] > 5 * stats["median"] and stats["min"] >= 1


@pytest.mark.skipif(not ANCHORS.exists(), reason="needs ../shared/anchors")
@pytest.mark.parametrize("num_clients", [100, 1000])
def test_dirichlet_equals_the_anchor_partition(num_clients):
    import sys

    sys.path.insert(0, str(ANCHORS))
    import workload

    labels = workload.load_data()[1]
    ours = dirichlet(labels, num_clients, 0.5, seed=0).indices
    theirs = workload.dirichlet_partition(labels, num_clients, 0.5, 0)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_natural_split_is_one_client_per_user():
    part = natural(["bob", "ann", "bob", "cy", "ann"])
    assert part.names == ["bob", "ann", "cy"]
    assert [i.tolist() for i in part.indices] == [[0, 2], [1, 4], [3]]


def test_bad_requests_name_the_problem():
    with pytest.raises(ConfigError, match="only 5 samples"):
        iid(5, 6)
    with pytest.raises(ConfigError, match="unknown partition 'zipf'"):
        make_partition("zipf", LABELS, 3)
