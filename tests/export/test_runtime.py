"""Training with the ExecuTorch runtime alone matches eager PyTorch (pocketlearn's own methods) step for step."""

import dataclasses
import shutil

import pytest
import torch

from pocketlearn.checkpoint import load_weights
from pocketlearn.errors import ConfigError, DataError
from pocketlearn.evaluate import batches_of, evaluate
from pocketlearn.export import (
    DeviceTrainer,
    ProgramError,
    device_train,
    export_training,
    fixed_batches,
    plain_state,
    prepare_examples,
    read_info,
    save_trained,
)
from pocketlearn.export.executorch import prepare_method
from pocketlearn.export.runtime import load_program
from pocketlearn.methods import make_method
from pocketlearn.models import build_model, get_model_spec
from tests.export.conftest import PROGRAMS

STEPS = 10


def eager_losses(name, initial, x, y, steps=STEPS):
    """The reference: pocketlearn's method (autograd + torch.optim.SGD) from the program's initial weights."""
    model, method, options, batch = PROGRAMS[name]
    trainer = make_method(method, build_model(model), **options)
    trainer.model.load_state_dict(initial)
    losses = [trainer.step(b) for _, b in zip(range(steps), fixed_batches(x, y, batch), strict=False)]
    return losses, trainer.model.state_dict()


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_loss_curve_and_weights_match_eager_sgd(programs, name):
    path = programs(name)
    info = read_info(path)
    initial = DeviceTrainer(path).state_dict()
    x, y = get_model_spec(info.model).example_batch(3 * info.batch_size + 1, seed=1)  # 3 full batches + 1 dropped
    result = device_train(path, x, y, steps=STEPS)
    reference, state = eager_losses(name, initial, *prepare_examples(info, x, y))
    assert len(result.losses) == STEPS
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(reference), rtol=0, atol=1e-5)
    assert result.state.keys() == state.keys()
    for key, value in result.state.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["mlp-bias", "cnn-sparse", "mlp-lora"])
def test_only_the_methods_parameters_get_gradients_and_change(programs, name):
    path = programs(name)
    info = read_info(path)
    model, method, options, _ = PROGRAMS[name]
    expected = make_method(method, build_model(model), **options).trainable_parameters()
    assert set(info.trainable) == set(expected)
    trainer = DeviceTrainer(path)
    initial = trainer.state_dict()
    x, y = get_model_spec(info.model).example_batch(info.batch_size, seed=2)
    for _ in range(3):
        trainer.step((x.contiguous(), y))
    assert set(trainer.module.named_gradients()) == {"model." + k for k in info.trainable}  # none for frozen
    after = trainer.state_dict()
    for key in info.state_keys:
        if key in info.trainable:
            assert not torch.equal(after[key], initial[key]), f"{key} should train"
        else:
            assert torch.equal(after[key], initial[key]), f"{key} is frozen"


def test_checkpoint_loads_with_load_weights_and_evaluates(programs, digits, tmp_path):
    path = programs("mlp-backprop")
    x, y, xt, yt = digits
    result = device_train(path, x, y, steps=60, lr=0.1)
    save_trained(tmp_path / "trained.pt", result)
    model = build_model("digits-mlp")
    load_weights(model, tmp_path / "trained.pt")
    assert evaluate(model, batches_of(xt, yt, 256))["accuracy"] > 0.6  # 10 classes: chance is 0.1


def test_lora_checkpoint_fits_the_wrapped_model_and_merged_fits_the_plain_one(programs, digits, tmp_path):
    path = programs("mlp-lora")
    x, y, xt, yt = digits
    result = device_train(path, x, y, steps=5)
    save_trained(tmp_path / "adapters.pt", result)
    save_trained(tmp_path / "merged.pt", result, merged=True)
    _, method, options, _ = PROGRAMS["mlp-lora"]
    wrapped = make_method("lora", build_model("digits-mlp"), **options).model
    load_weights(wrapped, tmp_path / "adapters.pt")
    plain = build_model("digits-mlp")
    load_weights(plain, tmp_path / "merged.pt")
    batches = batches_of(xt, yt, 256)
    assert evaluate(plain, batches)["loss"] == pytest.approx(evaluate(wrapped, batches)["loss"], abs=1e-5)
    resumed = prepare_method(get_model_spec("digits-mlp"), "lora", options, tmp_path / "adapters.pt")  # --init
    assert all(torch.equal(v, result.state[k]) for k, v in resumed.model.state_dict().items())


def test_plain_state_joins_sparse_row_slices(programs):
    options = {"last_k": 2, "channel_fraction": 0.5}
    info = dataclasses.replace(read_info(programs("mlp-bias")), method="sparse", options=options)
    sliced = make_method("sparse", build_model("digits-mlp"), **options).model
    assert any(k.endswith("weight_head") for k in sliced.state_dict())
    plain = build_model("digits-mlp")
    plain.load_state_dict(plain_state(info, sliced.state_dict()))
    x = torch.randn(5, 64)
    torch.testing.assert_close(plain(x), sliced(x))


def test_corrupt_or_truncated_program_is_a_clear_error(programs, tmp_path):
    pte = tmp_path / "t.pte"
    shutil.copy(programs("mlp-bias"), pte)
    shutil.copy(f"{programs('mlp-bias')}.json", f"{pte}.json")
    data = pte.read_bytes()
    pte.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramError, match="truncated or corrupt.*export again"):
        DeviceTrainer(pte)
    with pytest.raises(ProgramError, match="cannot load.*export it again"):
        load_program(pte)  # past the digest check, the runtime's own refusal is also one clear error
    (tmp_path / "t.pte.json").unlink()
    with pytest.raises(ProgramError, match="no sidecar"):
        DeviceTrainer(pte)
    with pytest.raises(ProgramError, match="no training program"):
        DeviceTrainer(tmp_path / "missing.pte")


def test_mismatched_data_is_a_clear_error(programs):
    info = read_info(programs("mlp-bias"))
    x, y = torch.randn(20, 64), torch.randint(0, 10, (20,))
    with pytest.raises(DataError, match=r"shape \[63\].*inputs of shape \[64\]"):
        prepare_examples(info, x[:, :63], y)
    with pytest.raises(DataError, match=r"labels should lie in \[0, 10\), found 12"):
        prepare_examples(info, x, torch.full((20,), 12))
    with pytest.raises(DataError, match="5 examples.*batches of 16.*--batch 5"):
        prepare_examples(info, x[:5], y[:5])
    flat = prepare_examples(read_info(programs("cnn-sparse")), torch.randn(4, 784), torch.zeros(4, dtype=torch.long))
    assert flat[0].shape == (4, 1, 28, 28)  # flattened images fit a model that takes (1, 28, 28)
    with pytest.raises(DataError, match=r"rejected the batch.*16 x \[64\] float32"):
        DeviceTrainer(programs("mlp-bias")).step((x[:3], y[:3]))  # a batch the runtime refuses, not a crash


@pytest.mark.parametrize(("method", "options", "match"), [
    ("sgd", {}, "unknown training method 'sgd'"),
    ("mezo", {}, "cannot be exported.*choose one of"),
    ("backprop", {"optimizer": "adamw"}, "SGD only; use optimizer=sgd"),
    ("lora", {"dropout": 0.1}, "use dropout=0"),
])
def test_what_cannot_be_exported_is_a_config_error(tmp_path, method, options, match):
    with pytest.raises(ConfigError, match=match):
        export_training("digits-mlp", tmp_path / "x.pte", method=method, options=options)
