import pytest

from pocketlearn.devices import DeviceProfile, get_device
from pocketlearn.errors import BudgetError
from pocketlearn.memory import plan
from pocketlearn.models import get_model_spec


def test_recommends_the_best_method_that_fits():
    batch = get_model_spec("mlp-wide").example_batch(64)
    full = plan("mlp-wide", get_device("laptop-16g"), batch, methods=["backprop", "bias"], measure_memory=False)
    assert full.recommended == "backprop"
    bias_peak = next(r for r in full.rows if r.method == "bias").peak_bytes
    squeezed = DeviceProfile("squeezed", bias_peak + 1024)
    assert plan("mlp-wide", squeezed, batch, methods=["backprop", "bias"], measure_memory=False).recommended == "bias"


def test_measured_plan_uses_the_measurement():
    batch = get_model_spec("digits-mlp").example_batch(16)
    result = plan("digits-mlp", get_device("phone-1g"), batch, methods=["bias"], steps=1)
    row = result.rows[0]
    assert row.measurement is not None and row.peak_bytes == row.measurement.peak_bytes
    assert result.inference.measurement is not None


def test_no_fit_names_the_smallest_budget_that_would_work():
    batch = get_model_spec("mlp-wide").example_batch(64)
    with pytest.raises(BudgetError, match=r"smallest is bias at [\d.]+ MiB\. A budget of [\d.]+ MiB would work"):
        plan("mlp-wide", get_device("mcu-512k"), batch, methods=["backprop", "bias"], measure_memory=False)


def test_quantized_base_rows_are_variants_ranked_after_their_fp32_method():
    from pocketlearn.memory.planner import _rank, train_flags, variant

    assert variant("lora@q4") == ("lora", {"base": "q4", "checkpointing": True})
    assert variant("bias@q8") == ("bias", {"base": "q8"})
    assert variant("mezo") == ("mezo", {})
    assert sorted(["mezo@q4", "lora@q4", "lora", "backprop"], key=_rank) == ["backprop", "lora", "lora@q4", "mezo@q4"]
    assert train_flags("lora@q4") == "-m lora -o base=q4 -o checkpointing=true"


@pytest.mark.slow
def test_a_pretrained_lm_estimated_on_its_skeleton_is_within_3_percent_of_one_on_its_weights():
    from pocketlearn.memory import estimate
    from pocketlearn.memory.planner import _estimated
    from pocketlearn.methods import make_method

    spec = get_model_spec("smollm2-135m")
    batch = spec.example_batch(2, 64)
    for method, options in [("backprop", {}), ("lora", {}), ("mezo", {"subset": "lora"})]:
        skeleton, trainable = _estimated("smollm2-135m", method, options, batch)
        on_weights = make_method(method, spec.build(), **options)
        assert trainable == on_weights.num_trainable()
        real = estimate(on_weights, batch)
        assert skeleton.weights == real.weights
        # the meta device runs attention's reference kernel, which keeps a little more than the CPU's fused one
        assert real.total <= skeleton.total <= 1.03 * real.total, (method, skeleton, real)


def test_planning_a_pretrained_lm_loads_no_weights(monkeypatch):
    import pocketlearn.models.pretrained as pretrained

    def no_weights(**_):
        raise AssertionError("the plan loaded the model's weights")

    monkeypatch.setattr(pretrained, "load_smollm2", no_weights)
    batch = get_model_spec("smollm2-135m").example_batch(4, 128)
    result = plan("smollm2-135m", get_device("phone-4g"), batch, methods=["backprop", "lora", "mezo"],
                  measure_memory=False)
    rows = {r.method: r for r in result.rows}
    weights = 134_515_008 * 4  # SmolLM2-135M's parameters in fp32 (its embedding tied to the output layer)
    assert all(abs(r.estimate.weights - weights) < 0.02 * weights for r in rows.values()), rows
    assert rows["backprop"].estimate.total > rows["lora"].estimate.total > rows["mezo"].estimate.total
