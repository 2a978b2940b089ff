import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pocketlearn.errors import ConfigError, UnsupportedModelError
from pocketlearn.evaluate import evaluate
from pocketlearn.methods import make_method
from pocketlearn.methods.lean import lean_conv2d, make_lean
from pocketlearn.methods.tinytl import LiteResidualConv2d, _AvgPool2d, _BranchConv2d, _upsample
from tests.conftest import eval_batches, saved_activation_bytes, train_batches


def test_tinytl_starts_as_the_wrapped_model(digits, digits_cnn):
    reference = copy.deepcopy(digits_cnn)
    method = make_method("tinytl", digits_cnn)
    x = eval_batches(digits, image=True)[0][0]
    for train in (True, False):
        method.model.train(train), reference.train(train)
        torch.testing.assert_close(method.model(x), reference(x))


def test_tinytl_trains_biases_branches_and_head(digits_cnn):
    untouched = copy.deepcopy(digits_cnn)
    method = make_method("tinytl", digits_cnn)
    assert set(method.trainable_parameters()) == {
        "0.conv.bias", "0.lite_conv.weight", "0.lite_norm.weight", "0.lite_norm.bias", "0.lite_proj.weight",
        "3.conv.bias", "3.lite_conv.weight", "3.lite_norm.weight", "3.lite_norm.bias", "3.lite_proj.weight",
        "7.bias", "9.weight", "9.bias",
    }
    assert set(make_method("tinytl", untouched, train_head=False).trainable_parameters()) == {
        n for n in method.trainable_parameters() if n != "9.weight"}


def test_tinytl_learns_digits_with_conv_weights_frozen(digits, digits_cnn):
    conv_weights = [digits_cnn[i].weight.clone() for i in (0, 3)]
    before = evaluate(digits_cnn, eval_batches(digits, image=True))
    method = make_method("tinytl", digits_cnn, lr=0.02, optimizer="adamw")
    for batch in train_batches(digits, epochs=5, image=True):
        method.step(batch)
    after = evaluate(method.model, eval_batches(digits, image=True))
    assert after["loss"] < before["loss"] * 0.5
    assert after["accuracy"] > 0.7
    for i, weight in zip((0, 3), conv_weights, strict=True):
        assert torch.equal(method.model[i].conv.weight, weight)
    assert method.model[3].lite_proj.weight.abs().sum() > 0  # the branches learned something


def test_first_step_of_biases_and_head_matches_backprop(digits, digits_cnn):
    """At init the branches output zero, so biases and head get exactly backprop's gradients."""
    full = make_method("backprop", copy.deepcopy(digits_cnn), lr=0.1)
    lite = make_method("tinytl", digits_cnn, lr=0.1)
    batch = train_batches(digits, image=True)[0]
    assert lite.step(batch) == pytest.approx(full.step(batch), rel=1e-6)
    expected = dict(full.model.named_parameters())
    for name, p in lite.trainable_parameters().items():
        if "lite_" not in name:
            torch.testing.assert_close(p, expected[name.replace(".conv.", ".")])


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups", "side"),
                         [(1, 1, 1, 1, 8), (2, 1, 1, 2, 9), (2, 0, 2, 4, 11), (3, 2, 1, 1, 10)])
def test_frozen_conv_gradients_match_autograd(stride, padding, dilation, groups, side):
    conv = nn.Conv2d(4, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    conv.weight.requires_grad_(False)
    x = torch.randn(2, 4, side, side + 1, requires_grad=True)
    ours = lean_conv2d(conv, x)
    reference = nn.Conv2d.forward(conv, x)
    grad = torch.randn_like(reference)
    torch.testing.assert_close(ours, reference)
    for a, b in zip(torch.autograd.grad(ours, (x, conv.bias), grad),
                    torch.autograd.grad(reference, (x, conv.bias), grad), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("d", "side"), [(2, 8), (2, 9), (3, 10), (4, 7)])
def test_avg_pool_gradient_matches_autograd(d, side):
    x = torch.randn(2, 3, side, side + 1, requires_grad=True)
    ours = _AvgPool2d.apply(x, d)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(ours, F.avg_pool2d(x, d))
    torch.testing.assert_close(torch.autograd.grad(ours, x, grad)[0],
                               torch.autograd.grad(F.avg_pool2d(x, d), x, grad)[0])


@pytest.mark.parametrize(("kernel", "groups"), [(3, 8), (3, 1), (1, 1)])
def test_branch_convs_off_onednn_give_the_plain_conv_and_its_gradients(kernel, groups):
    x = torch.randn(2, 16, 9, 7, requires_grad=True)
    w = torch.randn(24, 16 // groups, kernel, kernel, requires_grad=True)
    ours = _BranchConv2d.apply(x, w, kernel // 2, groups)
    plain = F.conv2d(x, w, None, 1, kernel // 2, 1, groups)
    grad = torch.randn_like(plain)
    torch.testing.assert_close(ours, plain)
    for a, b in zip(torch.autograd.grad(ours, (x, w), grad), torch.autograd.grad(plain, (x, w), grad), strict=True):
        torch.testing.assert_close(a, b)
    assert torch.backends.mkldnn.enabled  # the switch is back


@pytest.mark.parametrize("size", [(8, 10), (12, 15), (9, 11), (4, 5)])
def test_upsampling_is_nearest_interpolation(size):
    r = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(_upsample(r, size), F.interpolate(r, size=size, mode="nearest"))


def test_strided_convs_on_odd_sizes_keep_their_shapes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 5, stride=2),
                          nn.Flatten(), nn.Linear(6, 5))  # 11 -> 6 -> 1
    reference = copy.deepcopy(model)
    method = make_method("tinytl", model, downsample=4, groups=4, lr=0.5)
    x, y = torch.randn(4, 3, 11, 11), torch.randint(0, 5, (4,))
    torch.testing.assert_close(method.model(x), reference(x))
    for _ in range(3):
        method.step((x, y))
    assert not torch.allclose(method.model(x), reference(x))


def test_branch_saves_only_the_downsampled_input():
    wrapper = LiteResidualConv2d(make_lean_conv(nn.Conv2d(16, 16, 3, padding=1)), downsample=2)
    x = torch.randn(8, 16, 32, 32, requires_grad=True)
    # the pooled input (1/4); the branch's inside is recomputed in backward
    assert saved_activation_bytes(wrapper, inputs=x) == x.nbytes // 4
    assert saved_activation_bytes(wrapper.conv.requires_grad_(True), inputs=x) == x.nbytes  # plain conv


def make_lean_conv(conv: nn.Conv2d) -> nn.Conv2d:
    conv.requires_grad_(False)
    make_lean(conv)
    return conv


def test_tinytl_on_tensorflow_same_padding_trains_at_batch_one():
    """TF-"same" padding (odd pixel after) on odd and even sizes; a batch of one trains (group norm)."""
    from tests.methods.test_lean import tiny_efficientnet

    model = tiny_efficientnet()
    reference = copy.deepcopy(model)
    method = make_method("tinytl", model, lr=0.05)
    assert sum("lite_norm" in n for n in method.trainable_parameters()) > 0
    for side in (31, 32):
        x = torch.rand(1, 3, side, side)
        method.model.eval()
        torch.testing.assert_close(method.model(x), reference(x))  # branches start at zero
    x, y = torch.rand(1, 3, 31, 31), torch.tensor([2])
    losses = [method.step((x, y)) for _ in range(8)]
    assert losses[-1] < losses[0] * 0.5


def test_tinytl_saves_fewer_activation_bytes_than_backprop(digits, digits_cnn):
    batch = train_batches(digits, image=True)[0]
    full = saved_activation_bytes(make_method("backprop", copy.deepcopy(digits_cnn)).model, batch)
    lite = saved_activation_bytes(make_method("tinytl", digits_cnn).model, batch)
    assert lite < full


def test_tinytl_needs_conv_layers(digits_mlp):
    with pytest.raises(UnsupportedModelError, match="needs Conv2d layers.*`bias` or `lora`"):
        make_method("tinytl", digits_mlp)


def test_bad_options_name_every_problem(digits_cnn):
    with pytest.raises(ConfigError, match="`downsample` should be >= 1, got 0.*`groups` should be >= 1, got -1"):
        make_method("tinytl", digits_cnn, downsample=0, groups=-1)
