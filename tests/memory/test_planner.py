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
