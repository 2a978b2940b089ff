import copy

import pytest
import torch
from torch import nn

from pocketlearn.errors import ConfigError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.sparse import model_blocks, train_first_rows
from pocketlearn.models import GPTConfig, TinyGPT
from tests.conftest import eval_batches, saved_activation_bytes, train_batches

CNN_WEIGHT_LAYERS = (0, 3, 7, 9)  # conv, conv, linear, linear head in tests' digits_cnn


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_sparse_trains_last_blocks_and_every_bias(digits_cnn):
    untouched = copy.deepcopy(digits_cnn)
    method = make_method("sparse", digits_cnn, last_k=2)
    assert set(method.trainable_parameters()) == {"0.bias", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"}
    no_biases = make_method("sparse", untouched, last_k=3, train_biases=False)
    assert set(no_biases.trainable_parameters()) == {"3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"}


def test_sparse_learns_digits_and_leaves_frozen_weights(digits, digits_cnn):
    start = snapshot(digits_cnn)
    before = evaluate(digits_cnn, eval_batches(digits, image=True))
    method = make_method("sparse", digits_cnn, lr=0.01, optimizer="adamw")
    for batch in train_batches(digits, epochs=5, image=True):
        method.step(batch)
    after = evaluate(method.model, eval_batches(digits, image=True))
    assert after["loss"] < before["loss"] * 0.5
    assert after["accuracy"] > 0.65
    for name in ("0.weight", "3.weight"):
        assert torch.equal(method.model.get_parameter(name), start[name])


def test_sparse_on_tiny_gpt_trains_the_last_block_head_and_biases():
    model = TinyGPT(GPTConfig(block_size=16, n_layer=3, n_embd=32))
    start = snapshot(model)
    method = make_method("sparse", model, last_k=2, lr=0.01, optimizer="adamw")
    expected = {n for n in start if n.startswith(("blocks.2.", "lm_head.")) or n.endswith("bias")}
    assert set(method.trainable_parameters()) == expected
    ids = torch.randint(0, 256, (4, 17))
    losses = [method.step((ids[:, :-1], ids[:, 1:])) for _ in range(5)]
    assert losses[-1] < losses[0]
    for name, p in method.model.named_parameters():
        assert torch.equal(p, start[name]) == (name not in expected), name


def test_blocks_of_a_plain_module_are_its_leaf_layers():
    class TwoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.act, self.fc = nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.act(self.norm(x)))

    assert [n for n, _ in model_blocks(TwoLayers())] == ["norm", "fc"]
    assert [n for n, _ in model_blocks(TinyGPT(GPTConfig(n_layer=2)))] == ["blocks.0", "blocks.1", "lm_head"]


def test_one_step_equals_the_slices_of_backprops_step(digits, digits_cnn):
    """A parameter's gradient does not depend on what else trains: each trained row moves as in backprop."""
    start = copy.deepcopy(digits_cnn)
    full = make_method("backprop", copy.deepcopy(digits_cnn), lr=0.1)
    sparse = make_method("sparse", digits_cnn, lr=0.1, channel_fraction=0.5)
    batch = train_batches(digits, image=True)[0]
    assert sparse.step(batch) == pytest.approx(full.step(batch), rel=1e-6)
    trained_rows = {"0.weight": 0, "3.weight": 0, "7.weight": 32}  # all other rows train
    for i in CNN_WEIGHT_LAYERS:
        for attr in ("weight", "bias"):
            name = f"{i}.{attr}"
            got, new, old = (getattr(m[i], attr) for m in (sparse.model, full.model, start))
            expected = old.clone()
            rows = trained_rows.get(name, len(old))
            expected[:rows] = new[:rows]
            torch.testing.assert_close(got, expected, msg=name)


def test_channel_fraction_keeps_gradients_and_optimizer_state_for_the_slice_only(digits, digits_cnn):
    whole = make_method("sparse", copy.deepcopy(digits_cnn))
    weight = digits_cnn[7].weight.clone()  # (64, 32)
    method = make_method("sparse", digits_cnn, channel_fraction=0.5, lr=0.01, optimizer="adamw")
    sliced = method.trainable_parameters()["7.weight_head"]
    assert sliced.shape == (32, 32) and sliced.untyped_storage().nbytes() == 32 * 32 * 4
    assert method.num_trainable() == whole.num_trainable() - 32 * 32
    for batch in train_batches(digits, image=True):
        method.step(batch)
    assert method.optimizer.state[sliced]["exp_avg"].shape == (32, 32)
    assert not torch.equal(method.model[7].weight[:32], weight[:32])
    assert torch.equal(method.model[7].weight[32:], weight[32:])
    assert "9.weight" in method.trainable_parameters()  # the head trains whole


@pytest.mark.parametrize(("budget", "weights"), [
    (3098, {"0.weight", "3.weight", "7.weight", "9.weight"}),
    (2774, {"7.weight", "9.weight"}),  # 2112 + 650 in the blocks + 12 conv biases elsewhere
    (2773, {"9.weight"}),
    (726, {"9.weight"}),
])
def test_max_trainable_picks_the_most_blocks_that_fit(digits_cnn, budget, weights):
    method = make_method("sparse", digits_cnn, max_trainable=budget)
    assert {n for n in method.trainable_parameters() if n.endswith("weight")} == weights
    assert method.num_trainable() <= budget


def test_max_trainable_below_the_last_block_is_a_config_error(digits_cnn):
    with pytest.raises(ConfigError, match="`max_trainable` is 725 .* takes 726 parameters"):
        make_method("sparse", digits_cnn, max_trainable=725)


def test_last_k_beyond_the_blocks_is_a_config_error(digits_cnn):
    with pytest.raises(ConfigError, match="`last_k` is 5 but this model has 4 blocks"):
        make_method("sparse", digits_cnn, last_k=5)


def test_bad_options_name_every_problem(digits_cnn):
    with pytest.raises(ConfigError, match=r"`last_k` should be >= 1, got 0.*`max_trainable`.*"
                                          r"`channel_fraction` should be in \(0, 1\], got 1.5"):
        make_method("sparse", digits_cnn, last_k=0, max_trainable=0, channel_fraction=1.5)


def test_sparse_saves_fewer_activation_bytes_than_backprop(digits, digits_cnn):
    batch = train_batches(digits, image=True)[0]
    saved = {name: saved_activation_bytes(make_method(method, copy.deepcopy(digits_cnn), **options).model, batch)
             for name, method, options in [("backprop", "backprop", {}), ("sparse", "sparse", {}),
                                           ("half", "sparse", {"channel_fraction": 0.5}),
                                           ("no_biases", "sparse", {"train_biases": False})]}
    assert saved["sparse"] < saved["backprop"]
    assert saved["half"] == saved["sparse"]  # slicing builds no full-size weight for autograd to keep
    assert saved["no_biases"] < saved["sparse"] / 4  # backward stops at the first trained block


@pytest.mark.parametrize("make", [
    lambda: (nn.Linear(6, 8), torch.randn(3, 5, 6)),
    lambda: (nn.Conv1d(3, 8, 3, padding=1), torch.randn(2, 3, 7)),
    lambda: (nn.Conv2d(3, 8, 3, stride=2, padding_mode="reflect", padding=1), torch.randn(3, 9, 9)),  # unbatched
])
def test_first_rows_layer_computes_what_the_layer_did(make):
    layer, x = make()
    reference = copy.deepcopy(layer)
    train_first_rows(layer, 3)
    assert isinstance(layer, type(reference)) and [n for n, _ in layer.named_parameters()] == ["bias", "weight_head"]
    torch.testing.assert_close(layer.weight, reference.weight)
    out, expected = layer(x), reference(x)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(out, layer.weight_head, grad)[0],
                               torch.autograd.grad(expected, reference.weight, grad)[0][:3])
