import pytest
import torch

from pocketlearn.memory import measure
from pocketlearn.memory.measure import MeasurementError
from pocketlearn.models import get_model_spec, mlp


def wide_mlp() -> torch.nn.Module:
    return mlp(64, (512, 512), 10)


def broken_model() -> torch.nn.Module:
    raise RuntimeError("factory exploded")


@pytest.fixture(scope="module")
def batch():
    return get_model_spec("digits-mlp").example_batch(32)  # weights dominate, so what each method keeps stands out


@pytest.fixture(scope="module")
def measured(batch):
    return {m: measure(wide_mlp, m, batch, steps=2) for m in ("inference", "backprop", "bias")}


def test_training_sees_weights_gradients_and_activations(measured):
    weights = sum(p.numel() for p in wide_mlp().parameters()) * 4
    inference, backprop = measured["inference"], measured["backprop"]
    assert inference.peak_bytes >= weights
    # backprop holds weights + gradients + saved activations on top of what inference holds
    assert backprop.peak_bytes - inference.peak_bytes >= weights
    assert measured["bias"].peak_bytes < backprop.peak_bytes


def test_adamw_state_is_measured(batch, measured):
    adamw = measure(wide_mlp, "backprop", batch, options={"optimizer": "adamw"}, steps=2)
    weights = sum(p.numel() for p in wide_mlp().parameters()) * 4
    assert adamw.peak_bytes - measured["backprop"].peak_bytes >= 1.5 * weights  # two moments per weight


def test_reports_time_and_losses(measured):
    m = measured["backprop"]
    assert m.seconds_per_step > 0 and len(m.losses) == 2 and m.num_trainable > 0


def test_child_failure_is_reported_with_its_traceback(batch):
    with pytest.raises(MeasurementError, match="factory exploded"):
        measure(broken_model, "backprop", batch)
