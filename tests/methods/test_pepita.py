import copy

import pytest
import torch
from torch import nn

from pocketlearn.errors import UnsupportedModelError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.pepita import accumulate_update
from pocketlearn.models import mlp
from tests.conftest import assert_continues_identically, eval_batches, train_batches


def one_conv_cnn() -> nn.Sequential:
    """The paper's CNN shape (one conv layer + a linear read-out), sized for 8x8 digits."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))


def test_pepita_learns_digits_close_to_backprop(digits):
    model = mlp(64, (256,), 10)
    reference = make_method("backprop", copy.deepcopy(model), lr=0.1, momentum=0.9)
    before = evaluate(model, eval_batches(digits))
    method = make_method("pepita", model)
    for batch in train_batches(digits, epochs=2):
        method.step(batch)
        reference.step(batch)
    after = evaluate(method.model, eval_batches(digits))
    backprop = evaluate(reference.model, eval_batches(digits))
    assert after["loss"] < before["loss"] * 0.25
    assert after["accuracy"] > backprop["accuracy"] - 0.05  # 0.961 vs 0.967 here; 2-4 points on other seeds
    assert not any(p.requires_grad for p in model.parameters())
    assert set(method.trainable_parameters()) == {n for n, _ in model.named_parameters()}


def test_mempepita_gives_the_same_updates(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Dropout(0.2), nn.Linear(48, 32),
                          nn.Tanh(), nn.Linear(32, 10))
    plain = make_method("pepita", copy.deepcopy(model), seed=3)
    memory = make_method("pepita", model, seed=3, memory_efficient=True)
    for batch in train_batches(digits)[:5]:
        assert plain.step(batch) == pytest.approx(memory.step(batch), rel=1e-6)
    for p, q in zip(plain.model.parameters(), memory.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert plain.memory_traits().activations == "all_layers"
    assert memory.memory_traits().activations == "one_layer"


def test_last_layer_update_is_a_descent_direction(digits, digits_mlp):
    x, y = train_batches(digits)[0]
    reference = copy.deepcopy(digits_mlp)
    nn.functional.cross_entropy(reference(x), y).backward()
    method = make_method("pepita", digits_mlp, momentum=0.0)
    before = digits_mlp[-1].weight.clone()
    method.step((x, y))
    change = digits_mlp[-1].weight - before
    cosine = nn.functional.cosine_similarity(change.flatten(), -reference[-1].weight.grad.flatten(), dim=0)
    assert cosine > 0.9


@pytest.mark.parametrize("layer, shape", [(nn.Linear(6, 4), (5, 6)), (nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                                                      (5, 3, 7, 7))])
def test_layer_update_matches_autograd(layer, shape):
    h_in = torch.randn(shape)
    diff = torch.randn_like(layer(h_in))
    (layer(h_in) * diff).sum().div(shape[0]).backward()  # d/dW of <W h, diff>, batch mean
    dw, db = torch.zeros_like(layer.weight), torch.zeros_like(layer.bias)
    accumulate_update(layer, h_in, diff, [dw, db], alpha=1.0)
    torch.testing.assert_close(dw, layer.weight.grad)
    torch.testing.assert_close(db, layer.bias.grad)


def test_cnn_learns(digits):
    model = one_conv_cnn()
    before = evaluate(model, eval_batches(digits, image=True))
    first_conv = model[0].weight.clone()
    method = make_method("pepita", model)
    for batch in train_batches(digits, epochs=2, image=True):
        method.step(batch)
    after = evaluate(model, eval_batches(digits, image=True))
    assert after["loss"] < before["loss"] * 0.25
    assert after["accuracy"] > 0.9
    assert not torch.equal(model[0].weight, first_conv)
    assert method.memory_traits().optimizer_slots == 1


def test_resuming_from_state_dict_continues_identically(digits, digits_mlp):
    batches = train_batches(digits)[:4]
    method = make_method("pepita", digits_mlp)
    for batch in batches[:2]:
        method.step(batch)
    resumed = make_method("pepita", copy.deepcopy(digits_mlp))
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    assert_continues_identically(method, resumed, batches[2:])


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10)), "LayerNorm.*'mezo'"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10)), "BatchNorm2d"),
    (nn.ModuleDict({"fc": nn.Linear(64, 10)}), "nn.Sequential"),
    (nn.Sequential(nn.Linear(64, 10), nn.Softmax(-1)), "must end with"),
])
def test_unsupported_models_raise(model, match):
    with pytest.raises(UnsupportedModelError, match=match):
        make_method("pepita", model)


def test_bad_config_names_every_problem(digits_mlp):
    from pocketlearn.errors import ConfigError
    with pytest.raises(ConfigError, match="momentum.*feedback_scale"):
        make_method("pepita", digits_mlp, momentum=1.5, feedback_scale=0)
