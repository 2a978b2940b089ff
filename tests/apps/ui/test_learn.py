"""Learning tappability from crops: the scores, the replay buffer, and the staged federated curve."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from pocketlearn.apps.ui.dataset import CropStore, PageCrops
from pocketlearn.apps.ui.learn import LearnSettings, ReplayBuffer, learn, scores
from pocketlearn.errors import ConfigError


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.random(200) > 0.4
    prob = np.clip(truth * 0.3 + rng.random(200) * 0.7, 0, 1).round(1)  # ties included
    got = scores(prob, truth)
    assert got.auc == pytest.approx(roc_auc_score(truth, prob))
    assert got.f1 == pytest.approx(f1_score(truth, prob >= 0.5))


def test_the_replay_buffer_keeps_a_bounded_uniform_sample():
    buffer = ReplayBuffer(100, seed=0)
    for start in range(0, 1000, 50):
        ids = torch.arange(start, start + 50)
        buffer.add(ids.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).float(), ids)
    _, y = buffer.data()
    assert len(y) == 100 and buffer.seen == 1000 and len(set(y.tolist())) == 100
    assert 300 < float(y.float().mean()) < 700  # old crops stay as likely as new ones


def test_the_replay_buffer_keeps_the_share_asked_for_colour_inverted():
    crops = torch.rand(400, 3, 32, 32)
    buffer = ReplayBuffer(400, seed=0, inverted=0.5)
    buffer.add(crops, torch.zeros(400, dtype=torch.long))
    x, _ = buffer.data()
    flipped = (x == -crops).flatten(1).all(1)
    assert bool((flipped | (x == crops).flatten(1).all(1)).all())  # each crop as it was, or negated
    assert 150 < int(flipped.sum()) < 250
    with pytest.raises(ConfigError, match="learn.inverted"):
        LearnSettings(inverted=1.5)


def _synthetic_store(root, apps=5, pages=3, n=40):
    """Crops whose tappability shows in pixels: a blue box is tappable, a gray one is not (the DOM agrees 80%)."""
    store = CropStore(root)
    for a in range(apps):
        for p in range(pages):
            rng = np.random.default_rng([a, p])
            labels = rng.random(n) > 0.5
            crops = rng.integers(100, 160, (n, 32, 32, 3), dtype=np.uint8)
            crops[labels, 8:24, 8:24] = (40, 90, 220)
            control = np.where(rng.random(n) < 0.8, labels, ~labels)
            store.add(PageCrops(f"app{a}", f"file:///app{a}/{p}.html", crops, labels, control | labels, control,
                                np.zeros((n, 4), np.float32)))
    return store


def test_devices_learn_tappability_together_stage_after_stage(tmp_path):
    store = _synthetic_store(tmp_path)
    seen = []
    curve = learn(store, [["app0", "app1"], ["app2", "app3"]], ["app4"],
                  LearnSettings(stages=3, rounds=3, replay=64, lr=0.01), on_stage=seen.append)
    results, rule = curve.stages, curve.rule
    assert [r.stage for r in results] == [1, 2, 3] and seen == results
    assert results[-1].crops_seen == 4 * 3 * 40 and results[-1].method == "backprop"
    assert results[-1].federated.f1 > 0.9 and results[-1].federated.auc > 0.95  # the blue box, from pixels
    assert results[-1].bytes_per_client_round > 0
    assert 0.7 < rule.f1 < 0.9  # the DOM rule is right 80% of the time on this store
    for r in results:
        for s in (r.federated, r.alone, r.pooled):
            assert 0 <= s.precision <= 1 and 0 <= s.recall <= 1


def test_secure_aggregation_and_dp_are_options_of_the_federated_run(tmp_path):
    store = _synthetic_store(tmp_path, apps=4, pages=1)
    results = learn(store, [["app0"], ["app1"], ["app2"]], ["app3"],
                    LearnSettings(stages=1, rounds=2, secagg=True, noise_multiplier=0.5)).stages
    assert len(results) == 1 and results[0].bytes_per_client_round > 0
