"""IDS app: loader, drift detection, guarded swaps, on-device gains and the memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketlearn.apps.ids.data import KDD_COLUMNS, load_kdd, load_kdd_csv
from pocketlearn.apps.ids.device import DeviceLearner, LearnerConfig, check_budget
from pocketlearn.apps.ids.model import BaseModelConfig
from pocketlearn.apps.ids.run import IdsConfig, run_ids
from pocketlearn.apps.ids.stream import ScenarioConfig
from pocketlearn.devices import DeviceProfile, get_device
from pocketlearn.errors import BudgetError, DataError
from pocketlearn.methods import make_method
from pocketlearn.models.small import mlp

FAST = IdsConfig(scenario=ScenarioConfig(devices=2), learner=LearnerConfig(epochs=6), base=BaseModelConfig(epochs=30))


@pytest.fixture(scope="module")
def result():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        return run_ids(FAST, modes=("frozen", "on-device"))
    finally:
        torch.set_num_threads(threads)


def test_loader_finds_41_features_and_several_attack_types() -> None:
    table = load_kdd()
    assert table.meta["raw_features"] == 41
    assert len(table.classes) >= 6 and {"back", "satan", "portsweep", "land"} <= set(table.classes)
    assert len(table) > 2000 and np.isfinite(table.x).all()
    assert len(np.unique(np.column_stack([table.x, table.y]), axis=0)) == len(table)  # de-duplicated


def _write_csv(path, header, row) -> None:
    path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")


def test_user_csv_loads_and_malformed_csv_names_the_column(tmp_path) -> None:
    row = ["0", "tcp", "http", "SF", "181", "5450"] + ["0"] * 35
    good = tmp_path / "good.csv"
    _write_csv(good, [*KDD_COLUMNS, "label"], [*row, "normal."])
    table = load_kdd_csv(good)
    assert table.classes == ["normal"] and table.x.shape[0] == 1
    bad = tmp_path / "bad.csv"
    _write_csv(bad, [*KDD_COLUMNS, "label"], [*row[:4], "lots", *row[5:], "normal"])
    with pytest.raises(DataError, match="src_bytes"):
        load_kdd_csv(bad)
    missing = tmp_path / "missing.csv"
    _write_csv(missing, [c for c in KDD_COLUMNS if c != "flag"] + ["label"], [*row[:3], *row[4:], "normal"])
    with pytest.raises(DataError, match=r"flag.*Fix"):
        load_kdd_csv(missing)


def test_detector_fires_after_new_type_not_in_stable_prefix(result) -> None:
    assert result.false_alarms("frozen") == 0
    delays = result.detection_delays("frozen")["+portsweep"]
    assert all(d is not None and d <= 150 for d in delays), delays


def test_on_device_updates_beat_frozen_model_after_drift(result) -> None:
    onsets = result.first_onsets()
    frozen, updated = result.modes["frozen"], result.modes["on-device"]
    assert updated.accuracy_after(onsets) > frozen.accuracy_after(onsets) + 0.1
    assert any(u.swapped for ups in updated.updates for u in ups)


def test_worse_retrained_model_is_not_swapped_in(tmp_path) -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = mlp(4, (8,), 2)
    with torch.no_grad():  # a perfect live model: any retrained copy can at best tie
        model[1].weight.zero_(), model[1].bias.zero_()
        model[3].weight.zero_(), model[3].bias.zero_()
        model[1].weight[0, 0] = 10.0
        model[3].weight[1, 0] = 10.0
    config = LearnerConfig(method_options={"lr": 5.0}, epochs=3)  # a learning rate that wrecks the copy
    learner = DeviceLearner(model, config, get_device("phone-1g"), checkpoint=tmp_path / "m.pt")
    for xi, yi in zip(x, y, strict=True):
        learner.recent_x.append(xi)
        learner.recent_y.append(int(yi))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    record = learner.retrain()
    assert record.old_accuracy == 1.0 and not record.swapped
    assert learner.model is model and not (tmp_path / "m.pt").exists()
    assert all(torch.equal(before[k], v) for k, v in learner.model.state_dict().items())


def test_budget_check_refuses_a_device_that_is_too_small() -> None:
    method = make_method("backprop", mlp(121, (64, 32), 7))
    batch = (torch.zeros(32, 121), torch.zeros(32, dtype=torch.long))
    assert check_budget(method, batch, get_device("mcu-512k")) > 0
    tiny = DeviceProfile("tiny-16k", 16 * 1024)
    with pytest.raises(BudgetError, match="tiny-16k"):
        check_budget(method, batch, tiny)


def test_federation_by_secure_aggregation_matches_plain_fedavg():
    import copy
    from types import SimpleNamespace

    import torch

    from pocketlearn.apps.ids.federated import IdsFederation

    base = torch.nn.Linear(4, 3)

    def device(i, shift):
        model = copy.deepcopy(base)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        return SimpleNamespace(model=model, samples_learned=10 * (i + 1), device_index=i, offer=lambda m: None)

    results = []
    for clip in (None, 1.0):
        federation = IdsFederation(base, secagg_clip=clip)
        federation.sync([device(i, 0.1 * (i + 1)) for i in range(4)])
        results.append(dict(federation.global_model.named_parameters()))
    for name, plain in results[0].items():
        torch.testing.assert_close(results[1][name], plain, atol=1e-4, rtol=0)
    assert not torch.equal(results[0]["weight"], base.weight)
