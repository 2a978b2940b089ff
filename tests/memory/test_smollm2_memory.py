"""The memory goals on the real SmolLM2-135M (slow: each measurement loads the model in a fresh process)."""

import pytest

from pocketlearn.memory import measure
from pocketlearn.models import get_model_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def peaks():
    batch = get_model_spec("smollm2-135m").example_batch(2, 64)
    runs = {"inference": ("inference", {}), "mezo": ("mezo", {"lr": 1e-6}), "lora": ("lora", {}),
            "backprop": ("backprop", {"optimizer": "adamw", "lr": 1e-5})}
    return {k: measure("smollm2-135m", m, batch, options=o, steps=1).peak_bytes for k, (m, o) in runs.items()}


def test_mezo_needs_little_more_than_inference(peaks):
    assert peaks["mezo"] <= 1.3 * peaks["inference"]


def test_backprop_with_adamw_holds_weights_gradients_and_two_moments(peaks):
    assert peaks["backprop"] >= 3.5 * peaks["inference"]
    assert peaks["lora"] < 0.5 * peaks["backprop"]


def test_lora_on_the_4bit_base_fits_192_mib_and_is_estimated_within_tolerance():
    """The lean path (4-bit base, per-block recomputation, chunked loss) at batch 4 x 128, micro-batches of 2."""
    from pocketlearn.memory.estimate import estimate
    from pocketlearn.methods import make_method
    from pocketlearn.models import build_model

    batch = get_model_spec("smollm2-135m").example_batch(4, 128)
    options = {"base": "q4", "checkpointing": True, "optimizer": "adamw", "lr": 1e-3, "micro_batch": 2}
    measured = measure("smollm2-135m", "lora", batch, options=options, steps=1).peak_bytes
    estimated = estimate(make_method("lora", build_model("smollm2-135m", "q4"), **options), batch).total
    assert measured <= 192 * 2**20
    assert abs(estimated - measured) <= 0.2 * measured + 3 * 2**20  # the estimator's stated tolerance
