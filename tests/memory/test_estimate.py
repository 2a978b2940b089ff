"""The analytic estimate agrees with the fresh-process measurement within a stated tolerance."""

import pytest

from pocketlearn.memory import estimate, estimate_inference, measure
from pocketlearn.methods import make_method
from pocketlearn.models import build_model, get_model_spec

# |estimate - measured| <= 20% of measured + 3 MiB (allocator and runtime bookkeeping).
REL, ABS = 0.2, 3 * 2**20

CASES = [("mlp-wide", 256, "backprop"), ("mlp-wide", 256, "bias"), ("cnn", 64, "backprop"),
         ("tiny-gpt", 16, "backprop"), ("mlp-wide", 256, "inference")]


@pytest.mark.parametrize(("model", "batch_size", "method"), CASES)
def test_estimate_matches_measurement(model, batch_size, method):
    batch = get_model_spec(model).example_batch(batch_size)
    if method == "inference":
        est = estimate_inference(build_model(model), batch).total
    else:
        est = estimate(make_method(method, build_model(model)), batch).total
    measured = measure(model, method, batch, steps=2).peak_bytes
    assert abs(est - measured) <= REL * measured + ABS, (est / 2**20, measured / 2**20)


def test_estimate_parts_follow_the_method(digits_mlp):
    batch = get_model_spec("digits-mlp").example_batch(32)
    sgd = estimate(make_method("backprop", digits_mlp), batch)
    n = sum(p.numel() for p in digits_mlp.parameters())
    assert sgd.weights == sgd.gradients == 4 * n and sgd.optimizer == 0
    adamw = estimate(make_method("backprop", build_model("digits-mlp"), optimizer="adamw"), batch)
    assert adamw.optimizer == 2 * adamw.gradients
    assert sgd.activations > 0
