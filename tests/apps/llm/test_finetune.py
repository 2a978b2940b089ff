import pytest
import torch

from pocketlearn.apps.llm import FinetuneConfig, check_memory, finetune, get_choice, perplexity
from pocketlearn.devices import DeviceProfile
from pocketlearn.errors import BudgetError, ConfigError
from tests.apps.llm.conftest import tiny_llama


def test_lora_lowers_held_out_perplexity_on_repetitive_text(repetitive_user):
    method, report = finetune(tiny_llama(), repetitive_user, FinetuneConfig("lora", steps=30, lr=1e-2))
    assert report.perplexity_after < 0.5 * report.perplexity_before
    assert report.perplexity_after == pytest.approx(perplexity(method.model, repetitive_user.x_test,
                                                               repetitive_user.y_test))
    assert report.trainable_params == method.num_trainable() < sum(p.numel() for p in method.model.parameters())


def test_mezo_on_adapters_lowers_loss_without_gradients(repetitive_user):
    _, report = finetune(tiny_llama(), repetitive_user, FinetuneConfig("mezo", steps=300, lr=2e-3, batch_size=8))
    assert report.perplexity_after < 0.5 * report.perplexity_before


def test_memory_check_reports_peak_and_inference(repetitive_user):
    batch = (repetitive_user.x[:4], repetitive_user.y[:4])
    lora = check_memory(tiny_llama, get_choice("lora"), get_choice("lora").options, batch, None,
                        measure_memory=False)
    full = check_memory(tiny_llama, get_choice("backprop"), get_choice("backprop").options, batch, None,
                        measure_memory=False)
    assert not lora.measured and lora.inference_bytes > 0
    assert lora.peak_bytes < full.peak_bytes  # AdamW on every weight costs more than on the adapters


def test_a_method_over_the_budget_names_the_budget_and_what_fits(repetitive_user):
    batch = (repetitive_user.x[:4], repetitive_user.y[:4])
    peaks = {name: check_memory(tiny_llama, get_choice(name), get_choice(name).options, batch, None,
                                measure_memory=False).peak_bytes for name in ("backprop", "mezo")}
    budget = (peaks["mezo"] + peaks["backprop"]) // 2
    device = DeviceProfile("small-board", budget)
    with pytest.raises(BudgetError) as err:
        check_memory(tiny_llama, get_choice("backprop"), get_choice("backprop").options, batch, device,
                     measure_memory=False)
    message = str(err.value)
    assert "'small-board'" in message and "backprop" in message and "What fits: " in message
    assert "mezo" in message.split("What fits: ")[1]


def test_nothing_fits_names_the_smallest_need(repetitive_user):
    batch = (repetitive_user.x[:4], repetitive_user.y[:4])
    with pytest.raises(BudgetError, match="No method fits: the smallest is"):
        check_memory(tiny_llama, get_choice("lora"), get_choice("lora").options, batch,
                     DeviceProfile("mcu", 1024), measure_memory=False)


def test_bad_settings_are_reported_together():
    with pytest.raises(ConfigError, match="steps should be >= 1.*batch_size should be >= 1"):
        FinetuneConfig(steps=0, batch_size=0)
    with pytest.raises(ConfigError, match="unknown LLM fine-tuning method 'adam'"):
        get_choice("adam")


def test_a_device_check_needs_a_factory(repetitive_user):
    with pytest.raises(ConfigError, match="factory="):
        finetune(tiny_llama(), repetitive_user, FinetuneConfig(steps=1, device="phone-1g"))


def test_finetune_is_reproducible(repetitive_user):
    runs = [finetune(tiny_llama(), repetitive_user, FinetuneConfig("lora", steps=3))[1] for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    torch.testing.assert_close(runs[0].perplexity_after, runs[1].perplexity_after)


def test_a_choice_has_its_learning_rate_per_architecture_and_the_run_s_comes_first():
    from tests.quant.conftest import tiny_gemma

    mezo = get_choice("mezo")
    assert mezo.with_overrides(model=tiny_llama())["lr"] == mezo.options["lr"]
    assert mezo.with_overrides(model=tiny_gemma())["lr"] == mezo.lr_by_architecture["gemma3_text"] < mezo.options["lr"]
    assert mezo.with_overrides(5e-5, model=tiny_gemma())["lr"] == 5e-5
